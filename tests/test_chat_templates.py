"""Chat templates: llama.cpp's built-ins and Jinja rendering against llama.cpp's own expected strings
(tests/data/llama_chat_template_cases.json, extracted from llama.cpp's tests/test-chat-template.cpp),
template selection, and hostile templates (clean one-line errors, bounded time)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from llamatorch.core.chat_builtin import BUILTIN, apply_builtin, detect
from llamatorch.core.chat_jinja import JinjaTemplate
from llamatorch.core.errors import LlamatorchError

DATA = json.loads((Path(__file__).parent / "data" / "llama_chat_template_cases.json").read_text(encoding="utf-8"))
CASES = DATA["cases"]
CONV = [tuple(m) for m in DATA["conversation"]]


def _conv(case):
    return CONV + [tuple(m) for m in case["extra_conversation"]]


@pytest.mark.parametrize("case", CASES, ids=[c["name"][:40] for c in CASES])
def test_builtin_matches_llama_cpp(case):
    """llama_chat_apply_template(template_str): detect the built-in, then format (the legacy path)."""
    name = detect(case["template_str"])
    assert name is not None, case["name"]
    assert apply_builtin(name, _conv(case), True) == case["expected_output"]


JINJA_CASES = [c for c in CASES if c["supported_with_jinja"]]


@pytest.mark.parametrize("case", JINJA_CASES, ids=[c["name"][:40] for c in JINJA_CASES])
def test_jinja_matches_llama_cpp(case):
    """The same templates through our sandboxed Jinja (llama.cpp's --jinja path, system-role workaround)."""
    t = JinjaTemplate(case["template_str"], case["bos_token"], case["eos_token"])
    msgs = [{"role": r, "content": c} for r, c in _conv(case)]
    assert t.render(msgs, True) == (case["expected_output_jinja"] or case["expected_output"])


def test_builtin_names_cover_llama_cpp_list():
    for name in ("chatml", "llama2", "llama2-sys", "llama3", "llama4", "gemma", "mistral-v1", "mistral-v3",
                 "mistral-v3-tekken", "mistral-v7", "mistral-v7-tekken", "phi3", "phi4", "falcon3", "zephyr",
                 "deepseek", "deepseek2", "deepseek3", "command-r", "vicuna", "openchat", "granite", "exaone3",
                 "chatglm3", "chatglm4", "minicpm", "monarch", "orion", "gpt-oss", "kimi-k2", "seed_oss"):
        assert name in BUILTIN
        assert detect(name) == name


def test_builtin_without_generation_prompt():
    msgs = [("user", "Hi"), ("assistant", "Hello")]
    assert apply_builtin("chatml", msgs, False) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
    assert apply_builtin("gemma", [("system", " Be brief. "), ("user", "Hi")], True) == \
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    assert apply_builtin("llama3", [("user", " Hi ")], True) == \
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"


def test_jinja_globals():
    t = JinjaTemplate("{{ bos_token }}{{ messages[0].content|tojson }}{{ strftime_now('%Y') }}"
                      "{% if add_generation_prompt %}|gen{% endif %}", "<s>", "</s>")
    out = t.render([{"role": "user", "content": "a<b>\"é"}], True)
    assert out.startswith('<s>"a<b>\\"é"') and out.endswith("|gen")
    with pytest.raises(LlamatorchError, match="raised: roles must alternate"):
        JinjaTemplate("{{ raise_exception('roles must alternate') }}{{ messages[0].content }}").render(
            [{"role": "user", "content": "x"}], True)


HOSTILE = {
    "dunder_to_os": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "globals_of_a_global": "{{ cycler.__init__.__globals__.os.system('echo pwned') }}",
    "self_globals": "{{ self.__init__.__globals__ }}",
    "mutate_input": "{{ messages.append(1) }}",
    "endless_loop": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "endless_output": "{% for i in range(100000) %}{% for j in range(100000) %}xx{% endfor %}{% endfor %}",
    "string_bomb": "{{ 'a' * 10**10 }}",
    "doubling_bomb": "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
                     "{% endfor %}{{ ns.s }}",
    "block_set_bomb": "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set t %}{{ ns.s }}{{ ns.s }}"
                      "{% endset %}{% set ns.s = t %}{% endfor %}{{ ns.s }}",
    "width_bomb": "{{ 'a'.ljust(10**10) }}",
    "format_bomb": "{{ '{:>10000000000}'.format(1) }}",
    "recursion": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "syntax": "{% for x in %}",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_template_is_a_clean_error(name, tmp_path):
    marker = tmp_path / "pwned"
    src = HOSTILE[name].replace("echo pwned", f"touch {marker}")
    t0 = time.monotonic()
    with pytest.raises(LlamatorchError) as ei:
        JinjaTemplate(src, time_limit=2.0).render([{"role": "user", "content": "hi"}], True)
    assert time.monotonic() - t0 < 10
    msg = str(ei.value)
    assert msg.startswith("chat template") and "\n" not in msg
    assert not marker.exists()


def test_time_bound_off_the_main_thread():
    """Off the main thread there is no SIGALRM: a trace hook stops the loop instead."""
    import threading

    result = {}

    def work():
        try:
            JinjaTemplate(HOSTILE["endless_loop"], time_limit=1.0).render([{"role": "user", "content": "hi"}], True)
        except LlamatorchError as e:
            result["err"] = str(e)

    th = threading.Thread(target=work)
    th.start()
    th.join(20)
    assert not th.is_alive() and "longer than" in result.get("err", "")
