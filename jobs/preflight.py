"""Preflight: check a ComfyUI API-format prompt against a backend's cached ``/object_info``.

Answers exactly as ComfyUI 0.3.64 ``POST /prompt`` does, so a broken prompt is refused with ComfyUI's own
400 body before a GPU is paid for. Sources read (tag v0.3.64): ``server.py`` ``post_prompt``,
``execution.py`` ``validate_prompt`` / ``validate_inputs``, ``comfy_execution/validation.py``
``validate_node_input``, ``comfy_execution/graph.py`` ``get_input_info``. Our ComfyUI simulator uses it too.

Deliberate differences from 0.3.64, each marked ``DIFF`` below:
  * Input on which ComfyUI's own code crashes with a 500 (prompt, node or inputs not an object, absurd
    nesting, non-JSON values) gets a 400 ``invalid_prompt`` instead.
  * A link cycle gets the ``dependency_cycle`` error of later ComfyUI (0.3.64 recursed until RecursionError);
    a link chain deeper than ``_MAX_LINK_DEPTH`` fails as that RecursionError would.
  * FLOAT NaN/infinity is ``invalid_input_type`` (0.3.64 lets NaN through; JSON cannot carry either).
  * ``["COMBO", {"options": [...]}]`` values are checked against their options, as later ComfyUI does;
    0.3.64 only checked legacy list combos. ``check_combo_options=False`` gives the exact 0.3.64 answer.
  * ComfyUI walks Python sets; we use first-seen order (inputs as declared, outputs as in the prompt) so
    answers are deterministic. Tracebacks are not reproduced (``extra_info.traceback`` is ``[]``).
"""

from __future__ import annotations

import copy
import math
from typing import Any

_MAX_NESTING = 64  # API prompts are ~4 levels deep; json.loads itself dies near 1000
_MAX_INT_BITS = 13_000  # ~3900 digits: still printable under Python's 4300-digit str() limit
_MAX_LINK_DEPTH = 300  # links followed from an output before we give up like a RecursionError

# Inputs that ComfyUI 0.3.64 hands to a node's own VALIDATE_INPUTS / validate_inputs instead of the built-in
# min/max/list checks (nodes.py, comfy_extras/, comfy_api_nodes/). Those custom checks need the backend's
# disk ("does this upload exist?"), so we cannot repeat them; we only skip the built-in checks, as ComfyUI
# does. An argument named "input_types" also switches off the link type check for the whole node.
_CUSTOM_VALIDATED = {
    "LoadImage": {"image"},
    "LoadImageMask": {"image"},
    "LoadImageOutput": {"image"},
    "LoadLatent": {"latent"},
    "LoadAudio": {"audio"},
    "LoadVideo": {"file"},
    "LoadImageSetNode": {"images", "resize_method"},
    "FluxProUltraImageNode": {"aspect_ratio"},
    "KlingCameraControls": {"horizontal_movement", "vertical_movement", "pan", "tilt", "roll", "zoom"},
    "TripoConversionNode": {"input_types"},
}

_JSON_NAMES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


class PromptValidationError(Exception):
    """Raised with the exact ComfyUI 400 body."""

    def __init__(self, body: dict):
        error = body.get("error") if isinstance(body, dict) else None
        super().__init__(error.get("message") if isinstance(error, dict) else "invalid prompt")
        self.body = body  # {"error": {...}, "node_errors": {...}}


class ValidatedOutputs(list):
    """The output node ids ComfyUI would execute, plus the ``node_errors`` of any outputs that failed:
    ComfyUI still queues a prompt when at least one output is valid and returns those in its 200 body."""

    node_errors: dict


def error_body(
    type_: str, message: str, details: str = "", extra_info: dict | None = None, node_errors: dict | None = None
) -> dict:
    """Build ComfyUI's ``{"error": {...}, "node_errors": {...}}`` envelope (also used for 'no_prompt' etc)."""
    error = {"type": type_, "message": message, "details": details, "extra_info": extra_info or {}}
    return {"error": error, "node_errors": node_errors or {}}


def validate_prompt(prompt: object, object_info: dict, *, check_combo_options: bool = True) -> list[str]:
    """Validate an API-format prompt against an object_info catalogue.

    Returns the list of output node ids that will execute (ComfyUI's ``outputs_to_execute``; see
    ``ValidatedOutputs``) or raises PromptValidationError(body) with exactly ComfyUI's 400 body.
    """
    catalogue = object_info if isinstance(object_info, dict) else {}
    _check_json_shape(prompt)
    assert isinstance(prompt, dict)
    outputs = []
    # ComfyUI's first pass: every node, reachable or not, needs a known class_type; first failure wins.
    for node_id, node in prompt.items():
        where = f"Node ID '#{node_id}'"
        if not isinstance(node, dict):  # DIFF: ComfyUI 500s (or reads a string node as "no class_type")
            raise _invalid_prompt(f"Cannot execute because node #{node_id} is not a JSON object.", where)
        if "class_type" not in node:
            raise _invalid_prompt("Cannot execute because a node is missing the class_type property.", where)
        class_type = node["class_type"]
        info = catalogue.get(class_type) if isinstance(class_type, str) else None
        if not isinstance(info, dict):
            raise _invalid_prompt(f"Cannot execute because node {class_type} does not exist.", where)
        if "inputs" in node and not isinstance(node["inputs"], dict):  # DIFF: ComfyUI trips over it later
            raise _invalid_prompt(f"Cannot execute because the inputs of node #{node_id} are not a JSON object.", where)
        if info.get("output_node") is True:
            outputs.append(node_id)
    if not outputs:
        raise PromptValidationError(error_body("prompt_no_outputs", "Prompt has no outputs"))

    validator = _Validator(prompt, catalogue, check_combo_options)
    good: list[str] = []
    failed: list[list[dict[str, Any]]] = []
    node_errors: dict[str, Any] = {}
    try:
        for out in outputs:
            try:
                ok, reasons = validator.validate(out, [])
            except _ComfyCrashError as crash:  # ComfyUI's own code raised while validating this output node
                extra = {"exception_type": crash.type_name, "traceback": []}
                reasons = [_err("exception_during_validation", "Exception when validating node", crash.text, extra)]
                ok = False
                validator.validated[out] = (ok, reasons)
            if ok:
                good.append(out)
                continue
            failed.append(reasons)
            # Quirk kept: every node validated so far that has errors of its own gains this output as a
            # dependent, related or not. Nodes that are only invalid because of an upstream node are left out.
            for node_id, (node_ok, node_reasons) in validator.validated.items():
                if not node_ok and node_reasons:
                    entry = node_errors.setdefault(
                        node_id,
                        {"errors": node_reasons, "dependent_outputs": [], "class_type": prompt[node_id]["class_type"]},
                    )
                    entry["dependent_outputs"].append(out)
    except RecursionError:  # belt and braces: _MAX_LINK_DEPTH should stop this first
        raise _invalid_prompt("Cannot execute because the prompt's links are nested too deeply.") from None
    if not good:
        # Only the output nodes' own errors are summarised; upstream errors live in node_errors.
        details = "\n".join(f"{e['message']}: {e['details']}" for reasons in failed for e in reasons)
        body = error_body(
            "prompt_outputs_failed_validation", "Prompt outputs failed validation", details, node_errors=node_errors
        )
        raise PromptValidationError(body)
    result = ValidatedOutputs(good)
    result.node_errors = node_errors
    return result


class _ComfyCrashError(Exception):
    """Stands in for the Python exception ComfyUI's own code raises at the same spot (e.g. the KeyError of a
    link to a missing node); it is caught where ComfyUI catches that exception."""

    def __init__(self, type_name: str, text: str):
        super().__init__(text)
        self.type_name, self.text = type_name, text


class _Validator:
    """ComfyUI's recursive ``validate_inputs``, memoised per node in ``validated`` like the original."""

    def __init__(self, prompt: dict, catalogue: dict, check_combo_options: bool):
        self.prompt, self.catalogue, self.check_combo_options = prompt, catalogue, check_combo_options
        self.validated: dict[str, tuple[bool, list]] = {}

    def validate(self, node_id: str, visiting: list) -> tuple[bool, list]:
        """Validate one node and (through its links) everything upstream; returns (ok, its own errors)."""
        if node_id in self.validated:
            return self.validated[node_id]
        if node_id in visiting:
            return self._cycle(node_id, visiting)
        if len(visiting) > _MAX_LINK_DEPTH:
            raise _ComfyCrashError("RecursionError", "maximum recursion depth exceeded")
        node = self.prompt[node_id]
        if "inputs" not in node:
            raise _ComfyCrashError("KeyError", "'inputs'")  # ComfyUI: prompt[unique_id]['inputs']
        inputs, class_type = node["inputs"], node["class_type"]
        custom = _CUSTOM_VALIDATED.get(class_type, set())
        errors, upstream_ok = [], True
        for name, category, input_type, extra in _declared_inputs(self.catalogue[class_type]):
            if name not in inputs:
                if category == "required":
                    missing = {"input_name": name}
                    errors.append(_err("required_input_missing", "Required input is missing", name, missing))
                continue
            value, config = inputs[name], [copy.deepcopy(input_type), copy.deepcopy(extra)]
            if isinstance(value, list):  # a list is always a link [node_id, slot]
                error, linked_ok = self._link(node_id, name, value, input_type, config, custom, visiting)
                upstream_ok = upstream_ok and linked_ok
            else:
                error = self._value(name, value, input_type, extra, config, custom)
            if error:
                errors.append(error)
        # A cycle found further up may already have put errors on this node: join them (later ComfyUI).
        prior_ok, prior_errors = self.validated.get(node_id, (True, []))
        result = (prior_ok and upstream_ok and not errors, prior_errors + [e for e in errors if e not in prior_errors])
        self.validated[node_id] = result
        return result

    def _link(self, node_id, name, link, input_type, config, custom, visiting) -> tuple[dict | None, bool]:
        """Check a linked input; returns (error or None, whether the linked node validated)."""
        if len(link) != 2:
            message = "Bad linked input, must be a length-2 list of [node_id, slot_index]"
            return _err("bad_linked_input", message, name, _extra(name, config, received_value=link)), True
        source_id, slot = link
        try:  # ComfyUI does prompt[o_id]['class_type'] and RETURN_TYPES[slot] outside any try: a crash
            source = self.prompt[source_id]
            received = tuple(_outputs(self.catalogue[source["class_type"]]))[slot]
        except (KeyError, IndexError, TypeError) as ex:
            raise _ComfyCrashError(type(ex).__name__, str(ex)) from None
        if "input_types" not in custom and not _types_match(received, input_type):
            details = f"{name}, received_type({received}) mismatch input_type({input_type})"
            extra = _extra(name, config, received_type=copy.deepcopy(received), linked_node=link)
            return _err("return_type_mismatch", "Return type mismatch between linked nodes", details, extra), True
        visiting.append(node_id)
        try:
            return None, self.validate(source_id, visiting)[0]
        except _ComfyCrashError as crash:  # the linked node's validation crashed: ComfyUI files it under that node
            extra = _extra(name, config, exception_message=crash.text, exception_type=crash.type_name)
            extra.update(traceback=[], linked_node=link)
            error = _err("exception_during_inner_validation", "Exception when validating inner node", crash.text, extra)
            self.validated[source_id] = (False, [error])
            return None, False
        finally:
            visiting.pop()

    def _value(self, name, value, input_type, extra, config, custom) -> dict | None:
        """Check a constant (widget) input: convert like ComfyUI, then min, max and the option list."""
        if isinstance(value, dict) and "__value__" in value:  # how the frontend sends list-valued widgets
            value = value["__value__"]
        try:
            value = _convert(input_type, value)
        except (ValueError, TypeError, OverflowError) as ex:
            message = f"Failed to convert an input value to a {input_type} value"
            extra_info = _extra(name, config, received_value=_safe(value), exception_message=str(ex))
            return _err("invalid_input_type", message, f"{name}, {value}, {ex}", extra_info)
        if name in custom:
            return None
        received = _extra(name, config, received_value=_safe(value))
        try:  # a comparison ComfyUI cannot make (e.g. text against a numeric min) crashes it
            if "min" in extra and value < extra["min"]:
                message = "Value {} smaller than min of {}".format(value, extra["min"])
                return _err("value_smaller_than_min", message, name, received)
            if "max" in extra and value > extra["max"]:
                message = "Value {} bigger than max of {}".format(value, extra["max"])
                return _err("value_bigger_than_max", message, name, received)
            options = self._options(input_type, extra)
            if options is None or value in options:
                return None
        except TypeError as ex:
            raise _ComfyCrashError("TypeError", str(ex)) from None
        if len(options) > 20:  # ComfyUI does not echo long lists (e.g. hundreds of model files)
            list_info, received["input_config"] = f"(list of length {len(options)})", None
        else:
            list_info = str(options)
        return _err("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {list_info}", received)

    def _options(self, input_type, extra) -> list | None:
        """The allowed values of a combo input, or None when the input is not a checked combo."""
        if isinstance(input_type, list):  # legacy combo: the type *is* the option list
            return input_type
        options = extra.get("options")
        if self.check_combo_options and input_type == "COMBO" and isinstance(options, list):
            return None if extra.get("remote") else options  # remote options live in the browser only
        return None

    def _cycle(self, node_id: str, visiting: list) -> tuple[bool, list]:
        """A link led back to a node being validated: mark every node on the loop (later ComfyUI's error)."""
        path = [*visiting[visiting.index(node_id) :], node_id]
        members = list(dict.fromkeys(path))
        text = " -> ".join(f"{n} ({self.prompt[n]['class_type']})" for n in path)
        for member in members:
            extra = {"node_id": member, "cycle_nodes": list(members)}
            self.validated[member] = (False, [_err("dependency_cycle", "Dependency cycle detected", text, extra)])
        return self.validated[node_id]


def _declared_inputs(info: dict):
    """Yield (name, category, type, options dict) for required then optional inputs. Hidden inputs are
    never required and unknown extra inputs are ignored, as in ComfyUI."""
    raw_sections = info.get("input")
    sections: dict[str, Any] = raw_sections if isinstance(raw_sections, dict) else {}
    seen = set()
    for category in ("required", "optional"):
        section = sections.get(category)
        for name, spec in section.items() if isinstance(section, dict) else ():
            if name in seen or not isinstance(spec, (list, tuple)) or not spec:
                continue  # 'required' wins a duplicate (get_input_info); a malformed entry cannot be checked
            seen.add(name)
            extra = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            yield name, category, spec[0], extra


def _outputs(info: dict) -> list:
    return info["output"] if isinstance(info.get("output"), list) else []


def _types_match(received, expected) -> bool:
    """``validate_node_input``: equal, ``*`` on either side (IO.ANY's ``__ne__``), or overlapping unions
    such as ``"INT,FLOAT"``."""
    if received == expected:
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    if "*" in (received, expected):
        return True
    return bool({t.strip() for t in received.split(",")} & {t.strip() for t in expected.split(",")})


def _convert(input_type, value):
    """ComfyUI's coercion: int(), float(), str(), bool() - so "12" and 12.9 are fine INTs."""
    if input_type == "INT":
        return int(value)
    if input_type == "FLOAT":
        value = float(value)
        if not math.isfinite(value):  # DIFF: ComfyUI accepts NaN (it compares false to min and max)
            raise ValueError(f"{value} is not a finite number")
        return value
    if input_type == "STRING":
        return str(value)
    if input_type == "BOOLEAN":
        return bool(value)  # so "false" is True, exactly as in ComfyUI
    return value  # link types given a constant: ComfyUI does not check them at all


def _check_json_shape(prompt: object) -> None:
    """DIFF: refuse, without recursion, what would crash ComfyUI or json.dumps: a prompt that is not an
    object, nesting beyond _MAX_NESTING, non-string keys, unprintable integers, non-JSON values."""
    if not isinstance(prompt, dict):
        name = "null" if prompt is None else _JSON_NAMES.get(type(prompt), type(prompt).__name__)
        raise _invalid_prompt("Cannot execute because the prompt is not a JSON object of nodes.", f"Got {name}.")
    stack: list[tuple[object, int, object]] = [(prompt, 0, None)]
    while stack:
        value, depth, node_id = stack.pop()
        where = "" if node_id is None else f"Node ID '#{node_id}'"
        if depth > _MAX_NESTING:
            raise _invalid_prompt(f"Cannot execute because the prompt nests over {_MAX_NESTING} levels.", where)
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise _invalid_prompt("Cannot execute because the prompt has a key that is not a string.", where)
                stack.append((item, depth + 1, key if node_id is None else node_id))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, node_id) for item in value)
        elif isinstance(value, int) and value.bit_length() > _MAX_INT_BITS:
            raise _invalid_prompt("Cannot execute because the prompt holds an integer that is too large.", where)
        elif value is not None and not isinstance(value, (str, int, float)):
            raise _invalid_prompt(f"Cannot execute because the prompt holds a {type(value).__name__} value.", where)


def _err(type_: str, message: str, details: str, extra_info: dict) -> dict:
    return {"type": type_, "message": message, "details": details, "extra_info": extra_info}


def _extra(name: str, config: list, **more) -> dict:
    return {"input_name": name, "input_config": config, **more}


def _safe(value):
    """NaN and infinity have no JSON spelling; report them as text."""
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


def _invalid_prompt(message: str, details: str = "") -> PromptValidationError:
    return PromptValidationError(error_body("invalid_prompt", message, details))
