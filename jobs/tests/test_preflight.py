"""Preflight answers like ComfyUI 0.3.64's POST /prompt; checked against bodies recorded from the real server."""

import copy
import json
import math
import random

import pytest

from jobs.preflight import PromptValidationError, ValidatedOutputs, error_body, validate_prompt
from tests.recorded import NEWER, OBJECT_INFO_PATH, TINY_PATH, load, recorded_invalid

OBJECT_INFO = load(OBJECT_INFO_PATH)
TINY = load(TINY_PATH)
RECORDED = recorded_invalid()

KNOWN_ERROR_TYPES = {"invalid_prompt", "prompt_no_outputs", "prompt_outputs_failed_validation"}


def node(class_type, **inputs):
    return {"class_type": class_type, "inputs": inputs}


def tiny(**changes):
    """The recorded tiny workflow (EmptyImage 1 -> ImageInvert 2 -> SaveImage 3) with node changes applied."""
    prompt = copy.deepcopy(TINY)
    for node_id, change in changes.items():
        change(prompt, node_id)
    return prompt


def set_input(name, value):
    return lambda prompt, node_id: prompt[node_id]["inputs"].__setitem__(name, value)


def empty_image(**overrides):
    return node("EmptyImage", **{"width": 64, "height": 64, "batch_size": 1, "color": 0, **overrides})


def save(images):
    return node("SaveImage", images=images, filename_prefix="t")


def blend(**overrides):
    """EmptyImage -> ImageBlend (a FLOAT and a new-style COMBO input) -> SaveImage."""
    inputs = {"image1": ["1", 0], "image2": ["1", 0], "blend_factor": 0.5, "blend_mode": "normal", **overrides}
    return {"1": empty_image(), "2": node("ImageBlend", **inputs), "3": save(["2", 0])}


def stitch(**overrides):
    """EmptyImage -> ImageStitch (a BOOLEAN, legacy combos, an optional IMAGE) -> SaveImage."""
    inputs = {"image1": ["1", 0], "direction": "right", "match_image_size": True, "spacing_width": 0}
    inputs |= {"spacing_color": "white", **overrides}
    return {"1": empty_image(), "2": node("ImageStitch", **inputs), "3": save(["2", 0])}


def composite(**overrides):
    """EmptyImage -> ImageCompositeMasked (optional MASK input) -> SaveImage; LoadImage 4 offers a MASK."""
    inputs = {"destination": ["1", 0], "source": ["1", 0], "x": 0, "y": 0, "resize_source": False, **overrides}
    prompt = {"1": empty_image(), "2": node("ImageCompositeMasked", **inputs), "3": save(["2", 0])}
    prompt["4"] = node("LoadImage", image="example.png")
    return prompt


def checkpoint(ckpt_name):
    """CheckpointLoaderSimple's VAE decodes an empty latent: the model name decides."""
    return {
        "4": node("CheckpointLoaderSimple", ckpt_name=ckpt_name),
        "5": node("EmptyLatentImage", width=64, height=64, batch_size=1),
        "6": node("VAEDecode", samples=["5", 0], vae=["4", 2]),
        "7": save(["6", 0]),
    }


def upscale(model_name):
    """UpscaleModelLoader uses a new-style COMBO for its model file."""
    return {
        "1": empty_image(),
        "4": node("UpscaleModelLoader", model_name=model_name),
        "5": node("ImageUpscaleWithModel", upscale_model=["4", 0], image=["1", 0]),
        "3": save(["5", 0]),
    }


def chain(length):
    """EmptyImage followed by `length` ImageInverts in a row, then SaveImage."""
    prompt = {"0": empty_image()}
    for i in range(1, length + 1):
        prompt[str(i)] = node("ImageInvert", image=[str(i - 1), 0])
    prompt["save"] = save([str(length), 0])
    return prompt


def rejection(prompt, object_info=OBJECT_INFO, **options):
    with pytest.raises(PromptValidationError) as caught:
        validate_prompt(prompt, object_info, **options)
    return caught.value.body


# -- the bodies recorded from a real ComfyUI 0.3.64 -------------------------------------------------------------

RECORDED_CASES = {
    "missing_input": tiny(**{"3": lambda p, n: p[n]["inputs"].pop("images")}),
    "bad_value": tiny(**{"1": set_input("width", 999999)}),
    "bad_type": tiny(**{"1": set_input("width", "abc")}),
    "bad_link": tiny(**{"3": set_input("images", ["9", 0])}),
    "unknown_class": tiny(**{"1": lambda p, n: p[n].__setitem__("class_type", "NoSuchNode")}),
    "no_output_node": {"1": copy.deepcopy(TINY["1"])},
    "bad_combo": {
        "1": TINY["1"],
        "2": node("ImageScale", image=["1", 0], upscale_method="magic", width=64, height=64, crop="disabled"),
        "3": save(["2", 0]),
    },
}


@pytest.mark.parametrize("case", sorted(RECORDED_CASES))
def test_rejection_body_equals_the_one_comfyui_recorded(case):
    expected = copy.deepcopy(RECORDED[case]["body"])
    for entry in expected["node_errors"].values():  # we do not reproduce ComfyUI's Python traceback
        for error in entry["errors"]:
            if "traceback" in error["extra_info"]:
                error["extra_info"]["traceback"] = []
    assert RECORDED[case]["code"] == 400
    assert rejection(RECORDED_CASES[case]) == expected


def test_bad_link_matches_comfyui_type_message_details_and_exception_type():
    got = rejection(RECORDED_CASES["bad_link"])["node_errors"]["3"]["errors"][0]
    recorded = RECORDED["bad_link"]["body"]["node_errors"]["3"]["errors"][0]
    assert [got[k] for k in ("type", "message", "details")] == [recorded[k] for k in ("type", "message", "details")]
    assert got["extra_info"]["exception_type"] == recorded["extra_info"]["exception_type"] == "KeyError"


def test_error_body_builds_the_recorded_no_prompt_envelope():
    assert error_body("no_prompt", "No prompt provided", "No prompt provided") == RECORDED["no_prompt_key"]["body"]


def test_valid_prompt_returns_its_output_nodes_without_node_errors():
    result = validate_prompt(copy.deepcopy(TINY), OBJECT_INFO)
    assert result == ["3"]
    assert isinstance(result, ValidatedOutputs)
    assert result.node_errors == {}


# -- one bad input, one error: (name, prompt, failing node, type, message, details) -----------------------------

ONE_ERROR = [
    (
        "int below min",
        tiny(**{"1": set_input("width", 0)}),
        "1",
        "value_smaller_than_min",
        "Value 0 smaller than min of 1",
        "width",
    ),
    (
        "huge int is just above max",
        tiny(**{"1": set_input("width", 10**400)}),
        "1",
        "value_bigger_than_max",
        f"Value {10**400} bigger than max of 16384",
        "width",
    ),
    (
        "int from text",
        tiny(**{"1": set_input("height", "12px")}),
        "1",
        "invalid_input_type",
        "Failed to convert an input value to a INT value",
        "height, 12px, invalid literal for int() with base 10: '12px'",
    ),
    (
        "int from infinity",
        tiny(**{"1": set_input("width", math.inf)}),
        "1",
        "invalid_input_type",
        "Failed to convert an input value to a INT value",
        "width, inf, cannot convert float infinity to integer",
    ),
    (
        "int from null",
        tiny(**{"1": set_input("width", None)}),
        "1",
        "invalid_input_type",
        "Failed to convert an input value to a INT value",
        "width, None, int() argument must be a string, a bytes-like object or a real number, not 'NoneType'",
    ),
    (
        "wrapped __value__ is unwrapped then converted",
        tiny(**{"1": set_input("width", {"__value__": "x"})}),
        "1",
        "invalid_input_type",
        "Failed to convert an input value to a INT value",
        "width, x, invalid literal for int() with base 10: 'x'",
    ),
    (
        "float above max",
        blend(blend_factor=1.5),
        "2",
        "value_bigger_than_max",
        "Value 1.5 bigger than max of 1.0",
        "blend_factor",
    ),
    (
        "float below min",
        blend(blend_factor=-0.25),
        "2",
        "value_smaller_than_min",
        "Value -0.25 smaller than min of 0.0",
        "blend_factor",
    ),
    (
        "float NaN",
        blend(blend_factor=math.nan),
        "2",
        "invalid_input_type",
        "Failed to convert an input value to a FLOAT value",
        "blend_factor, nan, nan is not a finite number",
    ),
    (
        "float infinity as text",
        blend(blend_factor="inf"),
        "2",
        "invalid_input_type",
        "Failed to convert an input value to a FLOAT value",
        "blend_factor, inf, inf is not a finite number",
    ),
    (
        "float from text",
        blend(blend_factor="half"),
        "2",
        "invalid_input_type",
        "Failed to convert an input value to a FLOAT value",
        "blend_factor, half, could not convert string to float: 'half'",
    ),
    (
        "float too big for a float",
        blend(blend_factor=10**400),
        "2",
        "invalid_input_type",
        "Failed to convert an input value to a FLOAT value",
        f"blend_factor, {10**400}, int too large to convert to float",
    ),
    (
        "new-style COMBO option unknown",
        blend(blend_mode="glow"),
        "2",
        "value_not_in_list",
        "Value not in list",
        "blend_mode: 'glow' not in ['normal', 'multiply', 'screen', 'overlay', 'soft_light', 'difference']",
    ),
    (
        "legacy combo option unknown",
        stitch(direction="sideways"),
        "2",
        "value_not_in_list",
        "Value not in list",
        "direction: 'sideways' not in ['right', 'down', 'left', 'up']",
    ),
    (
        "boolean fed from an image",
        stitch(match_image_size=["1", 0]),
        "2",
        "return_type_mismatch",
        "Return type mismatch between linked nodes",
        "match_image_size, received_type(IMAGE) mismatch input_type(BOOLEAN)",
    ),
    (
        "checkpoint the backend does not have",
        checkpoint("sd15.safetensors"),
        "4",
        "value_not_in_list",
        "Value not in list",
        "ckpt_name: 'sd15.safetensors' not in []",
    ),
    (
        "upscale model the backend does not have",
        upscale("4x-UltraSharp.pth"),
        "4",
        "value_not_in_list",
        "Value not in list",
        "model_name: '4x-UltraSharp.pth' not in ['tiny_random_compact_x2.safetensors']",
    ),
    (
        "link from a latent into an image input",
        {"1": node("EmptyLatentImage", width=64, height=64, batch_size=1), "3": save(["1", 0])},
        "3",
        "return_type_mismatch",
        "Return type mismatch between linked nodes",
        "images, received_type(LATENT) mismatch input_type(IMAGE)",
    ),
    (
        "optional input linked to the wrong type",
        composite(mask=["1", 0]),
        "2",
        "return_type_mismatch",
        "Return type mismatch between linked nodes",
        "mask, received_type(IMAGE) mismatch input_type(MASK)",
    ),
    (
        "link that is not [node, slot]",
        tiny(**{"3": set_input("images", ["2"])}),
        "3",
        "bad_linked_input",
        "Bad linked input, must be a length-2 list of [node_id, slot_index]",
        "images",
    ),
    (
        "link slot past the outputs, on an output node",
        tiny(**{"3": set_input("images", ["2", 1])}),
        "3",
        "exception_during_validation",
        "Exception when validating node",
        "tuple index out of range",
    ),
    (
        "link slot past the outputs, upstream: filed under the upstream node",
        tiny(**{"2": set_input("image", ["1", 3])}),
        "2",
        "exception_during_inner_validation",
        "Exception when validating inner node",
        "tuple index out of range",
    ),
    (
        "link slot as text",
        tiny(**{"3": set_input("images", ["2", "0"])}),
        "3",
        "exception_during_validation",
        "Exception when validating node",
        "tuple indices must be integers or slices, not str",
    ),
    (
        "link to a node id given as a number",
        tiny(**{"3": set_input("images", [2, 0])}),
        "3",
        "exception_during_validation",
        "Exception when validating node",
        "2",
    ),
    (
        "output node without an inputs key",
        {"3": {"class_type": "SaveImage"}},
        "3",
        "exception_during_validation",
        "Exception when validating node",
        "'inputs'",
    ),
]


@pytest.mark.parametrize(
    ("name", "prompt", "node_id", "type_", "message", "details"), ONE_ERROR, ids=[case[0] for case in ONE_ERROR]
)
def test_bad_input_is_reported_on_its_node(name, prompt, node_id, type_, message, details):
    body = rejection(prompt)
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert list(body["node_errors"]) == [node_id]
    [error] = body["node_errors"][node_id]["errors"]
    assert (error["type"], error["message"], error["details"]) == (type_, message, details)
    assert body["node_errors"][node_id]["class_type"] == prompt[node_id]["class_type"]
    json.dumps(body, allow_nan=False)  # the body must be strict JSON, NaN included


def test_error_details_summarise_only_the_output_nodes_own_errors():
    body = rejection({"1": empty_image(), "3": node("SaveImage")})
    assert body["error"]["details"] == "Required input is missing: images\nRequired input is missing: filename_prefix"


def test_upstream_crash_names_the_downstream_input_and_link():
    error = rejection(tiny(**{"2": set_input("image", ["1", 3])}))["node_errors"]["2"]["errors"][0]
    assert error["extra_info"]["input_name"] == "images"
    assert error["extra_info"]["linked_node"] == ["2", 0]
    assert error["extra_info"]["exception_type"] == "IndexError"


def test_value_error_carries_input_config_and_received_value():
    error = rejection(blend(blend_mode="glow"))["node_errors"]["2"]["errors"][0]
    assert error["extra_info"] == {
        "input_name": "blend_mode",
        "input_config": OBJECT_INFO["ImageBlend"]["input"]["required"]["blend_mode"],
        "received_value": "glow",
    }


def test_nan_is_reported_as_text_so_the_body_stays_json():
    error = rejection(blend(blend_factor=math.nan))["node_errors"]["2"]["errors"][0]
    assert error["extra_info"]["received_value"] == "nan"


# -- accepted the way ComfyUI accepts them -------------------------------------------------------------------------

ACCEPTED = [
    ("int given as numeric text", tiny(**{"1": set_input("width", "64")})),
    ("int given as a float is truncated", tiny(**{"1": set_input("width", 64.9)})),
    ("int wrapped in __value__", tiny(**{"1": set_input("width", {"__value__": 64})})),
    ("string from a number", tiny(**{"3": set_input("filename_prefix", 7)})),
    ("boolean from any value, even 'false'", stitch(match_image_size="false")),
    ("known checkpoint-style combo value", stitch(direction="up", spacing_color="red")),
    ("known new-style COMBO value", blend(blend_mode="screen")),
    ("model file the backend has", upscale("tiny_random_compact_x2.safetensors")),
    ("optional input left out", composite()),
    ("optional input linked to the right type", composite(mask=["4", 1])),
    ("optional link into an optional image", stitch(image2=["1", 0])),
    ("unknown extra inputs are ignored", tiny(**{"3": set_input("bogus", [1, 2, 3])})),
    ("'*' input takes any type", {"1": empty_image(), "2": node("PreviewAny", source=["1", 0])}),
    (
        "upload missing from the cached list: LoadImage checks files itself",
        {"4": node("LoadImage", image="uploaded-later.png"), "3": save(["4", 0])},
    ),
    ("nodes no output needs are not validated", {**tiny(), "9": empty_image(width=-5)}),
    ("unicode node ids", {"ノード": empty_image(), "сохранить": save(["ノード", 0])}),
    ("a chain of 150 nodes", chain(150)),
]


@pytest.mark.parametrize(("name", "prompt"), ACCEPTED, ids=[case[0] for case in ACCEPTED])
def test_prompt_comfyui_accepts_is_accepted(name, prompt):
    before = copy.deepcopy(prompt)
    assert validate_prompt(prompt, OBJECT_INFO)
    assert prompt == before  # ComfyUI converts values in place; preflight must not touch the job's prompt


def test_new_style_combo_is_unchecked_in_exact_0_3_64_mode():
    assert validate_prompt(upscale("4x-UltraSharp.pth"), OBJECT_INFO, check_combo_options=False) == ["3"]
    assert rejection(stitch(direction="sideways"), check_combo_options=False)["node_errors"]["2"]


# -- several outputs -----------------------------------------------------------------------------------------------


def test_one_good_output_is_enough_and_the_bad_one_is_reported():
    prompt = {**tiny(), "5": empty_image(width=0), "4": save(["5", 0])}
    result = validate_prompt(prompt, OBJECT_INFO)
    assert result == ["3"]
    assert result.node_errors["5"]["dependent_outputs"] == ["4"]
    assert result.node_errors["5"]["errors"][0]["type"] == "value_smaller_than_min"


def test_shared_bad_node_lists_every_output_depending_on_it():
    prompt = {"1": empty_image(width=0), "3": save(["1", 0]), "4": save(["1", 0])}
    body = rejection(prompt)
    assert list(body["node_errors"]) == ["1"]
    assert body["node_errors"]["1"]["dependent_outputs"] == ["3", "4"]
    assert body["error"]["details"] == ""


# -- synthetic catalogue: unions, optional constants, long option lists -------------------------------------------


def node_def(required=(), optional=(), output=(), output_node=False):
    return {
        "input": {"required": dict(required), "optional": dict(optional)},
        "output": list(output),
        "output_node": output_node,
    }


SYNTHETIC = {
    "Number": node_def(output=["FLOAT"]),
    "Sink": node_def(
        required={"value": ["INT,FLOAT"]},
        optional={"strength": ["FLOAT", {"min": 0.0, "max": 1.0}], "choice": [[f"m{i}" for i in range(21)]]},
        output_node=True,
    ),
    "TextSink": node_def(required={"value": ["STRING,INT"]}, output_node=True),
}


def test_union_input_type_accepts_an_overlapping_output():
    assert validate_prompt({"1": node("Number"), "2": node("Sink", value=["1", 0])}, SYNTHETIC) == ["2"]


def test_union_input_type_rejects_a_disjoint_output():
    body = rejection({"1": node("Number"), "2": node("TextSink", value=["1", 0])}, SYNTHETIC)
    details = body["node_errors"]["2"]["errors"][0]["details"]
    assert details == "value, received_type(FLOAT) mismatch input_type(STRING,INT)"


def test_optional_constant_is_range_checked_when_present():
    body = rejection({"1": node("Number"), "2": node("Sink", value=["1", 0], strength=2)}, SYNTHETIC)
    assert body["error"]["details"] == "Value 2.0 bigger than max of 1.0: strength"


def test_long_option_list_is_not_echoed_back():
    body = rejection({"1": node("Number"), "2": node("Sink", value=["1", 0], choice="zz")}, SYNTHETIC)
    error = body["node_errors"]["2"]["errors"][0]
    assert error["details"] == "choice: 'zz' not in (list of length 21)"
    assert error["extra_info"]["input_config"] is None


# -- cycles and depth ---------------------------------------------------------------------------------------------


def test_link_cycle_terminates_with_a_dependency_cycle_error_on_each_member():
    prompt = {"2": node("ImageInvert", image=["4", 0]), "4": node("ImageInvert", image=["2", 0]), "3": save(["2", 0])}
    body = rejection(prompt)
    assert sorted(body["node_errors"]) == ["2", "4"]
    for node_id in ("2", "4"):
        [error] = body["node_errors"][node_id]["errors"]
        assert error["type"] == "dependency_cycle"
        assert error["details"] == "2 (ImageInvert) -> 4 (ImageInvert) -> 2 (ImageInvert)"


def test_node_linked_to_itself_is_a_cycle():
    body = rejection({"2": node("ImageInvert", image=["2", 0]), "3": save(["2", 0])})
    assert body["node_errors"]["2"]["errors"][0]["details"] == "2 (ImageInvert) -> 2 (ImageInvert)"


def test_absurdly_long_chain_fails_like_comfyuis_recursion_error_instead_of_crashing():
    body = rejection(chain(2000))
    [entry] = body["node_errors"].values()
    assert entry["class_type"] == "ImageInvert"
    assert entry["errors"][0]["type"] == "exception_during_inner_validation"
    assert entry["errors"][0]["extra_info"]["exception_type"] == "RecursionError"


# -- prompt-level answers and garbage ------------------------------------------------------------------------------


def deep_list(depth):
    value = []
    for _ in range(depth):
        value = [value]
    return value


def deep_dict(depth):
    value = {}
    for _ in range(depth):
        value = {"a": value}
    return value


GARBAGE = [
    # (name, prompt, expected error.type, expected error.message or None)
    ("null", None, "invalid_prompt", "Cannot execute because the prompt is not a JSON object of nodes."),
    ("list", [], "invalid_prompt", None),
    ("string", "x", "invalid_prompt", None),
    ("zero", 0, "invalid_prompt", None),
    ("empty object", {}, "prompt_no_outputs", "Prompt has no outputs"),
    ("node is a string", {"1": "x"}, "invalid_prompt", "Cannot execute because node #1 is not a JSON object."),
    (
        "node without class_type",
        {"1": {"inputs": {}}},
        "invalid_prompt",
        "Cannot execute because a node is missing the class_type property.",
    ),
    (
        "class_type is a number",
        {"1": {"class_type": 5}},
        "invalid_prompt",
        "Cannot execute because node 5 does not exist.",
    ),
    (
        "class_type is a list",
        {"1": {"class_type": ["SaveImage"]}},
        "invalid_prompt",
        "Cannot execute because node ['SaveImage'] does not exist.",
    ),
    ("unicode class_type", {"1": node("Säve🖼")}, "invalid_prompt", "Cannot execute because node Säve🖼 does not exist."),
    ("unknown class in an unreachable node", {**tiny(), "8": node("NoSuchNode")}, "invalid_prompt", None),
    (
        "inputs is a list",
        {"3": {"class_type": "SaveImage", "inputs": []}},
        "invalid_prompt",
        "Cannot execute because the inputs of node #3 are not a JSON object.",
    ),
    ("number as node id", {1: TINY["1"], "3": save([1, 0])}, "invalid_prompt", None),
    (
        "10,000-deep list as a value",
        tiny(**{"3": set_input("filename_prefix", deep_list(10_000))}),
        "invalid_prompt",
        "Cannot execute because the prompt nests over 64 levels.",
    ),
    ("10,000-deep object as a value", tiny(**{"1": set_input("width", deep_dict(10_000))}), "invalid_prompt", None),
    ("10**400 as an INT", tiny(**{"1": set_input("width", 10**400)}), "prompt_outputs_failed_validation", None),
    ("10**5000 cannot even be printed", tiny(**{"1": set_input("width", 10**5000)}), "invalid_prompt", None),
    ("NaN as a FLOAT", blend(blend_factor=math.nan), "prompt_outputs_failed_validation", None),
    ("a tuple is not JSON", tiny(**{"1": set_input("width", (1, 2))}), "invalid_prompt", None),
    ("link into a list id", tiny(**{"3": set_input("images", [["2"], 0])}), "prompt_outputs_failed_validation", None),
]


@pytest.mark.parametrize(("name", "prompt", "type_", "message"), GARBAGE, ids=[case[0] for case in GARBAGE])
def test_garbage_gets_a_clean_400_body(name, prompt, type_, message):
    body = rejection(prompt)
    assert body["error"]["type"] == type_
    assert isinstance(body["error"]["message"], str)
    assert isinstance(body["error"]["details"], str)
    if message is not None:
        assert body["error"]["message"] == message
    json.dumps(body, allow_nan=False)


JUNK = [
    None,
    "",
    "abc",
    "ü",
    -1,
    0,
    1.5,
    True,
    10**400,
    math.nan,
    -math.inf,
    [],
    ["1"],
    ["1", 0],
    ["9", 0],
    ["1", 99],
    ["1", -1],
    ["1", "0"],
    ["1", None],
    [["1"], 0],
    [{}, 0],
    ["3", 0],
    {},
    {"__value__": 3},
    {"__value__": [1]},
    deep_list(100),
]


def mutate(rng, prompt):
    node_id = rng.choice(list(prompt))
    target = prompt[node_id]
    roll = rng.random()
    if roll < 0.7 and target["inputs"]:
        target["inputs"][rng.choice(list(target["inputs"]))] = copy.deepcopy(rng.choice(JUNK))
    elif roll < 0.8:
        target.pop(rng.choice(["inputs", "class_type"]), None)
    elif roll < 0.9:
        target["class_type"] = rng.choice([*OBJECT_INFO, "Nope", 3])
    else:
        prompt[node_id] = copy.deepcopy(rng.choice(JUNK))


def test_random_mutations_only_ever_return_outputs_or_a_json_400_body():
    rng = random.Random(20250930)
    bases = [tiny(), blend(), stitch(), composite(), checkpoint("x"), upscale("x")]
    seen = set()
    for _ in range(3000):
        prompt = copy.deepcopy(rng.choice(bases))
        for _ in range(rng.randint(1, 3)):
            if prompt and all(isinstance(n, dict) and "inputs" in n for n in prompt.values()):
                mutate(rng, prompt)
        try:
            result = validate_prompt(prompt, OBJECT_INFO)
        except PromptValidationError as ex:
            assert ex.body["error"]["type"] in KNOWN_ERROR_TYPES
            assert isinstance(ex.body["error"]["message"], str)
            json.dumps(ex.body, allow_nan=False)
            seen.add(ex.body["error"]["type"])
        else:
            assert isinstance(result, list)
            assert all(isinstance(o, str) for o in result)
            seen.add("accepted")
    assert seen == KNOWN_ERROR_TYPES | {"accepted"}  # the corpus really reaches every kind of answer


# -- a newer ComfyUI's catalogue (0.12.1: V3 schema fields, COMBO specs with options, remote combos) -----------

NEWER_INFO = load(NEWER / "object_info.json.gz")
WIDGET_VALUES = {"INT": 1, "FLOAT": 1.0, "STRING": "x", "BOOLEAN": True}


def _filled(spec: list):
    """A value for a widget input of ``spec``, or None for a link input and for a list of model files that was
    empty on the recording machine (no model there, so no value can be right)."""
    kind, config = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if isinstance(kind, list):
        return kind[0] if kind else None
    if kind == "COMBO":
        if "options" in config:
            return config["options"][0] if config["options"] else None
        return "anything"  # a remote combo: its options come from a route, not the catalogue
    if kind in WIDGET_VALUES:
        return config.get("default", WIDGET_VALUES[kind])
    return None


def _judged(class_type: str, inputs: dict) -> dict:
    """The node alone if it is an output node, else read by 0.12.1's PreviewAny (which takes any type)."""
    prompt = {"1": {"class_type": class_type, "inputs": inputs}}
    if not NEWER_INFO[class_type].get("output_node"):
        prompt["2"] = {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}
    return prompt


def test_the_tiny_workflow_passes_against_comfyui_0_12_1s_catalogue():
    assert validate_prompt(copy.deepcopy(TINY), NEWER_INFO) == ["3"]


@pytest.mark.parametrize("class_type", sorted(NEWER_INFO))
def test_every_node_of_comfyui_0_12_1_is_judged_without_a_crash(class_type):
    """Each of 0.12.1's 607 nodes, with its widgets filled from its own spec and its links left out: preflight
    accepts it or refuses it in ComfyUI's shape (naming the missing links), and never fails in another way."""
    info = NEWER_INFO[class_type]
    inputs = {}
    for section in ("required", "optional"):
        for name, spec in (info.get("input", {}).get(section) or {}).items():
            if isinstance(spec, list) and spec and (value := _filled(spec)) is not None:
                inputs[name] = value
    try:
        validate_prompt(_judged(class_type, inputs), NEWER_INFO)
    except PromptValidationError as exc:
        assert exc.body["error"]["type"] == "prompt_outputs_failed_validation", exc.body
        errors = [e for node in exc.body["node_errors"].values() for e in node["errors"]]
        # Only the links left out can be wrong: every widget value came from the node's own spec.
        assert {e["type"] for e in errors} == {"required_input_missing"}, errors


def test_a_v3_combo_of_comfyui_0_12_1_refuses_a_value_outside_its_options():
    """TextEncodeAceStepAudio1.5's ``timesignature`` is ``["COMBO", {"options": ["2", "3", "4", "6"]}]`` there."""
    info = NEWER_INFO["TextEncodeAceStepAudio1.5"]
    spec = info["input"]["required"]["timesignature"]
    assert spec[0] == "COMBO" and spec[1]["options"] == ["2", "3", "4", "6"]
    inputs = {n: _filled(s) for n, s in info["input"]["required"].items() if _filled(s) is not None}
    for value, refused in (("4", False), ("5", True)):
        prompt = _judged("TextEncodeAceStepAudio1.5", {**inputs, "timesignature": value})
        with pytest.raises(PromptValidationError) as caught:
            validate_prompt(prompt, NEWER_INFO)
        errors = [e["type"] for node in caught.value.body["node_errors"].values() for e in node["errors"]]
        assert ("value_not_in_list" in errors) is refused, errors
