"""The web UI: pages rendered on the server (Jinja2, autoescaped), updated in place with htmx,
behind the browser session of a signed-in person.

The server installs it with :func:`install_ui`; docs/ui.md says how to add a page.
"""

from bastion.ui.install import install_ui
from bastion.ui.state import UiHooks

__all__ = ["UiHooks", "install_ui"]
