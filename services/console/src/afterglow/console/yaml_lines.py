"""Where in a YAML text a validation error's field is: ``stages[1].wait`` -> line 9.

The journeys API names the field of a definition error as a path; the editor shows the
error at its line. Pure; composes the YAML (no aliases are resolved: the journeys API
refuses them anyway)."""

from __future__ import annotations

import re

import yaml

_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def line_of(text: str, path: str | None) -> int | None:
    """The 1-based line of ``path`` in ``text``, or of its deepest part that exists;
    None when the text does not parse or the path names nothing in it."""
    if not path:
        return None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    found = None
    for name, index in _PART.findall(path):
        if isinstance(node, yaml.MappingNode) and name:
            match = next((v for k, v in node.value if k.value == name), None)
            if match is None:
                break
            found = next(k for k, v in node.value if v is match)
            node = match
        elif isinstance(node, yaml.SequenceNode) and index:
            i = int(index)
            if i >= len(node.value):
                break
            node = found = node.value[i]
        else:
            break
    return None if found is None else found.start_mark.line + 1


def error_line(text: str) -> int | None:
    """The line of a YAML syntax error, None when the text parses."""
    try:
        yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        return mark.line + 1 if mark else None
    except yaml.YAMLError:
        return None
    return None
