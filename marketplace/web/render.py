"""Server-side HTML with escaping by default: `string.Template` pages whose values are escaped
unless they are `Html` (markup this package built itself from escaped parts).

    render("model.html", title=metadata.name, schema=Html(...))   # title is escaped, schema is not

Every string that comes from a provider or the chain (names, descriptions, endpoints, JSON) goes
through `escape`; a template placeholder cannot be filled with raw text by accident.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from functools import cache
from importlib import resources
from string import Template

__all__ = ["Html", "escape", "join", "render", "static_bytes", "table"]


class Html(str):
    """Markup that is already safe to send (built from escaped parts or trusted template text)."""

    __slots__ = ()


def escape(value: object) -> Html:
    """`value` as HTML text (quotes escaped too, so it is safe inside double-quoted attributes)."""
    return value if isinstance(value, Html) else Html(html.escape(str(value), quote=True))


def join(parts: Iterable[object], separator: str = "") -> Html:
    """Escaped `parts` joined by the (trusted) `separator`."""
    return Html(separator.join(escape(part) for part in parts))


@cache
def _template(name: str) -> Template:
    return Template(resources.files("marketplace.web").joinpath("templates", name).read_text("utf-8"))


def render(template: str, /, **values: object) -> Html:
    """The template `templates/<template>` with every value escaped unless it is `Html`.

    A placeholder left without a value is a KeyError: pages never show a bare `$name`."""
    return Html(_template(template).substitute({key: escape(value) for key, value in values.items()}))


def table(headers: Iterable[object], rows: Iterable[Iterable[object]], *, empty: str = "none",
          css_class: str = "data") -> Html:
    """A `<table>` of escaped cells (`Html` cells kept as markup); `empty` when there are no rows."""
    body = [Html("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>") for row in rows]
    if not body:
        return Html(f'<p class="empty">{escape(empty)}</p>')
    head = "".join(f'<th scope="col">{escape(cell)}</th>' for cell in headers)
    return Html(f'<table class="{escape(css_class)}"><thead><tr>{head}</tr></thead>'
                f'<tbody>{"".join(body)}</tbody></table>')


@cache
def static_bytes(name: str) -> bytes:
    """A file of `static/` (the stylesheet), read once."""
    return resources.files("marketplace.web").joinpath("static", name).read_bytes()
