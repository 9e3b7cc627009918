"""bpf_source: -D values and the assembled program text, checked without bcc.

Without a compiler here, a small C preprocessor (#if/#elif/#else/#endif, #define, #ifndef)
runs over the text for each plan, and checks what clang would: every macro an #if reads
is defined (the preprocessor reads an undefined one as 0, silently choosing the wrong
probe body), and every constant and helper the selected code uses exists in it.
"""

import dataclasses
import itertools
import re
import resource
from pathlib import Path
from typing import Any

import pytest

from tests.unit.conftest import FUNCTIONS, TRACEPOINTS, full_kernel_features, kernel_btf
from tracer import schema
from tracer.kernel import probes
from tracer.kernel import source as bpf_source
from tracer.kernel.btf import Btf
from tracer.kernel.features import KernelFeatures
from tracer.kernel.offsets import kernel_constants
from tracer.kernel.probes import PROBES
from tracer.kernel.tiers import Plan, plan

RSS_FIELDS = frozenset({"pid", "comm", "total_vm", "anon_rss", "file_rss", "shmem_rss", "uid", "pgtables"})
CONSTANTS = kernel_constants(Btf(kernel_btf()))
CONSTANTS_WITH_OPTIONAL = kernel_constants(Btf(kernel_btf(optional=True)))
TIER_MACROS = {
    probes.MEMCG_OOM: "MEMCG_OOM_TIER",
    probes.OOM_CONTEXT: "OOM_CONTEXT_TIER",
    probes.OOM_KILL: "OOM_KILL_TIER",
    probes.NEAR_OOM: "NEAR_OOM_TIER",
    probes.CHARGE_FAILURE: "CHARGE_FAILURE_TIER",
}
# Macros bcc's helpers.h (and its rewriter) provide to every program.
BCC_MACROS = {
    "BPF_HASH",
    "BPF_PERCPU_ARRAY",
    "BPF_RINGBUF_OUTPUT",
    "KFUNC_PROBE",
    "KRETFUNC_PROBE",
    "TRACEPOINT_PROBE",
    "RAW_TRACEPOINT_PROBE",
    "TP_DATA_LOC_READ_CONST",
    "PT_REGS_PARM1",
    "PT_REGS_PARM2",
    "PT_REGS_PARM3",
    "PT_REGS_RC",
}


def features(**overrides: Any) -> KernelFeatures:
    return full_kernel_features(RSS_FIELDS, **overrides)


NO_BTF: dict[str, Any] = {
    "btf": False,
    "btf_error": "disabled",
    "fentry": False,
    "fentry_reason": "needs kernel BTF",
    "mark_victim_raw_task": False,
}
NO_FENTRY: dict[str, Any] = {"fentry": False, "fentry_reason": "refused"}
TRACEPOINTS_ONLY: dict[str, Any] = {**NO_FENTRY, "kprobes": False}


def build(
    f: KernelFeatures, p: Plan | None = None, quiet_s: float = 10.0, constants: dict[str, int] = CONSTANTS
) -> tuple[Plan, dict[str, int | str], str]:
    p = p or plan(f)
    values = bpf_source.defines(p, f, constants if p.btf else {}, quiet_s)
    return p, values, bpf_source.source(values)


# ---- defines ----


@pytest.mark.parametrize(
    ("overrides", "tier_value"),
    [
        pytest.param({}, 1, id="fentry is 1"),
        pytest.param(NO_FENTRY, 2, id="kprobe is 2"),
    ],
)
def test_tier_macros_carry_the_tier_values_of_oomtrace_h(overrides: dict[str, Any], tier_value: int) -> None:
    _, values, _ = build(features(**overrides))
    assert {TIER_MACROS[p]: values[TIER_MACROS[p]] for p in PROBES} == dict.fromkeys(
        TIER_MACROS.values(), tier_value
    )


def test_tracepoint_tier_is_3_and_unavailable_is_0() -> None:
    _, values, _ = build(features(**TRACEPOINTS_ONLY))
    assert values["OOM_KILL_TIER"] == values["NEAR_OOM_TIER"] == 3
    assert values["MEMCG_OOM_TIER"] == values["OOM_CONTEXT_TIER"] == values["CHARGE_FAILURE_TIER"] == 0


@pytest.mark.parametrize(
    ("overrides", "have_btf"),
    [pytest.param({}, 1, id="with BTF"), pytest.param(NO_BTF, 0, id="without BTF")],
)
def test_have_btf_follows_the_plan(overrides: dict[str, Any], have_btf: int) -> None:
    _, values, _ = build(features(**overrides))
    assert values["OOMTRACE_HAVE_BTF"] == have_btf


def test_kernel_constants_are_defined_only_with_btf() -> None:
    p = plan(features(**NO_BTF))
    values = bpf_source.defines(p, features(**NO_BTF), CONSTANTS, 10.0)
    assert not set(CONSTANTS) & set(values)
    _, with_btf, _ = build(features())
    assert {k: with_btf[k] for k in CONSTANTS} == CONSTANTS


@pytest.mark.parametrize(
    ("fields", "has_rss"),
    [
        pytest.param(RSS_FIELDS, 1, id="6.x format with comm, rss and uid"),
        pytest.param(frozenset({"pid"}), 0, id="old format: pid only"),
        pytest.param(RSS_FIELDS - {"uid"}, 0, id="format without uid"),
    ],
)
def test_mark_victim_has_rss_only_when_the_format_has_every_field_read(
    fields: frozenset[str], has_rss: int
) -> None:
    _, values, _ = build(features(mark_victim_fields=fields))
    assert values["MARK_VICTIM_HAS_RSS"] == has_rss


def test_feature_flags_and_sizes_become_defines() -> None:
    f = features(cgroup2_memory=False, mark_victim_raw_task=False)
    values = bpf_source.defines(plan(f), f, CONSTANTS, 2.5, ringbuf_pages=128, near_oom_max_cgroups=99)
    assert values["OOMTRACE_CGROUP2_MEMORY"] == 0
    assert values["MARK_VICTIM_RAW"] == 0
    assert values["NEAR_OOM_QUIET_NS"] == 2_500_000_000
    assert values["OOMTRACE_RINGBUF_PAGES"] == 128
    assert values["NEAR_OOM_MAX_CGROUPS"] == 99
    assert values["ENOMEM"] == 12
    assert 1 << values["PAGE_SHIFT_VALUE"] == resource.getpagesize()


# ---- source ----


def test_source_defines_every_value_sorted_before_the_programs() -> None:
    _, values, text = build(features())
    defines = re.findall(r"^#define (\w+) (\S+)$", text.split("/* ---- bpf/")[0], re.MULTILINE)
    assert defines == sorted((k, str(v)) for k, v in values.items())


def test_every_file_of_bpf_is_the_entry_file_or_one_of_its_parts() -> None:
    on_disk = {p.name for p in bpf_source.BPF_DIR.iterdir() if p.suffix in (".h", ".c")}
    compiled = [bpf_source.ENTRY, *bpf_source.parts()]
    assert sorted(compiled) == sorted(on_disk)  # each once, none left out


def test_source_is_the_entry_file_with_each_part_in_place_of_its_include() -> None:
    _, _, text = build(features())
    assert not re.search(r'^#include "', text, re.MULTILINE)
    positions = [
        text.index(f"/* ---- bpf/{name} ---- */") for name in [bpf_source.ENTRY, *bpf_source.parts()]
    ]
    assert positions == sorted(positions)
    for name in bpf_source.parts():
        assert (bpf_source.BPF_DIR / name).read_text() in text


def test_header_comes_first_since_the_programs_use_its_struct() -> None:
    assert bpf_source.parts()[0] == "oomtrace.h"


@pytest.mark.parametrize(
    ("symbols", "tier_overrides", "fn"),
    [
        pytest.param(FUNCTIONS, {}, "try_charge_memcg", id="fentry on try_charge_memcg"),
        pytest.param(
            (FUNCTIONS - {"try_charge_memcg"}) | {"try_charge"}, {}, "try_charge", id="fentry on try_charge"
        ),
        pytest.param(
            (FUNCTIONS - {"try_charge_memcg"}) | {"try_charge"},
            NO_FENTRY,
            "try_charge",
            id="kprobe on try_charge",
        ),
    ],
)
def test_charge_function_macro_is_the_plans_target(
    symbols: frozenset[str], tier_overrides: dict[str, Any], fn: str
) -> None:
    _, values, text = build(features(symbols=symbols, **tier_overrides))
    assert values["CHARGE_FAILURE_FN"] == fn
    assert f"#define CHARGE_FAILURE_FN {fn}\n" in text


def test_fentry_charge_probe_is_named_through_the_macro_not_a_placeholder() -> None:
    kept, _ = preprocess(build(features())[2])
    assert "KRETFUNC_PROBE_EXPANDED(CHARGE_FAILURE_FN," in kept
    assert "__CHARGE_FN__" not in kept


def test_source_reads_bpf_files_from_bpf_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / bpf_source.ENTRY).write_text('/* fixture entry */\n#include "part.bpf.h"\n')
    (tmp_path / "part.bpf.h").write_text("/* fixture part */\n")
    monkeypatch.setattr(bpf_source, "BPF_DIR", tmp_path)
    _, _, text = build(features())
    assert "/* fixture entry */\n/* ---- bpf/part.bpf.h ---- */\n/* fixture part */\n" in text


# ---- #if macros of bpf/ are all defined ----

COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.DOTALL)
IDENT = re.compile(r"\b[A-Za-z_]\w*\b")


def strip_comments(text: str) -> str:
    return COMMENT.sub(lambda m: re.sub(r"[^\n]", " ", m.group()), text)


def bpf_file_texts() -> dict[str, str]:
    names = [bpf_source.ENTRY, *bpf_source.parts()]
    return {name: strip_comments((bpf_source.BPF_DIR / name).read_text()) for name in names}


def test_every_macro_an_if_in_bpf_reads_is_defined_by_defines_or_bpf() -> None:
    texts = bpf_file_texts()
    defined_in_bpf = {
        n for t in texts.values() for n in re.findall(r"^\s*#\s*define\s+(\w+)", t, re.MULTILINE)
    }
    read_by_if = {
        ident
        for t in texts.values()
        for line in re.findall(r"^\s*#\s*(?:el)?if\b(.*)$", t, re.MULTILINE)
        for ident in IDENT.findall(line)
        if ident != "defined"
    }
    assert read_by_if, "no #if lines found in bpf/: the parse is broken"
    for overrides in ({}, NO_BTF, TRACEPOINTS_ONLY):
        _, values, _ = build(features(**overrides))
        assert read_by_if - defined_in_bpf - set(values) == set()


class Undefined(Exception):
    pass


def preprocess(text: str) -> tuple[str, dict[str, str]]:
    """The lines of `text` an #if-aware preprocessor keeps, and the macros defined by then.

    Only what bpf/ uses: #define NAME [value], #if/#elif with ==, ||, &&, !, parentheses,
    #ifndef/#ifdef, #else, #endif. An identifier an #if reads that is not defined raises
    Undefined (clang would quietly read it as 0)."""
    text = strip_comments(text.replace("\\\n", " "))
    macros: dict[str, str] = {}
    kept: list[str] = []
    # stack of (this branch active, some branch of this #if already taken, enclosing active)
    stack: list[tuple[bool, bool, bool]] = []

    def active() -> bool:
        return all(s[0] for s in stack)

    def evaluate(expr: str) -> bool:
        def value(m: re.Match[str]) -> str:
            name = m.group()
            if name in ("and", "or", "not"):
                return name
            if name not in macros:
                raise Undefined(name)
            return "(" + re.sub(r"\b(\d+)[UL]+\b", r"\1", macros[name] or "1") + ")"

        py = expr.replace("||", " or ").replace("&&", " and ")
        py = re.sub(r"!(?!=)", " not ", py)
        py = re.sub(r"\b(\d+)U?L*L*\b", r"\1", py)
        py = IDENT.sub(value, py)
        return bool(eval(py, {"__builtins__": {}}))

    for line in text.splitlines():
        m = re.match(r"\s*#\s*(\w+)\s*(.*)", line)
        if not m:
            if active():
                kept.append(line)
            continue
        directive, rest = m.group(1), m.group(2).strip()
        if directive == "if":
            outer = active()
            taken = outer and evaluate(rest)
            stack.append((taken, taken, outer))
        elif directive in ("ifdef", "ifndef"):
            outer = active()
            taken = outer and ((rest in macros) == (directive == "ifdef"))
            stack.append((taken, taken, outer))
        elif directive == "elif":
            _, done, outer = stack.pop()
            taken = outer and not done and evaluate(rest)
            stack.append((taken, done or taken, outer))
        elif directive == "else":
            _, done, outer = stack.pop()
            stack.append((outer and not done, True, outer))
        elif directive == "endif":
            stack.pop()
        elif directive == "define" and active():
            m = re.match(r"(\w+)(\([^)]*\))?\s*(.*)", rest)
            assert m, f"cannot parse #define {rest}"
            macros[m.group(1)] = m.group(3).strip()
        elif active():
            kept.append(line)
    assert not stack, "unbalanced #if/#endif"
    return "\n".join(kept), macros


def static_functions(text: str) -> set[str]:
    return set(re.findall(r"^static\s+__always_inline\s+[^(]*?\b(\w+)\s*\(", text, re.MULTILINE))


def enum_constants(text: str) -> set[str]:
    names: set[str] = set()
    for body in re.findall(r"\benum\s+\w*\s*\{(.*?)\}", text, re.DOTALL):
        names |= set(re.findall(r"\b([A-Z_][A-Z0-9_]*)\s*=", body))
    return names


def feature_matrix() -> list[Any]:
    """Kernels detect() can report (with and without the optional BTF constants), and the
    plans loader's downgrades can reach from them; deduplicated by the defines they produce."""
    cases: dict[tuple[tuple[str, int], ...], Any] = {}
    for btf, fentry, kprobes, tps, raw, rss, cgroup2 in itertools.product((True, False), repeat=7):
        if (fentry or raw) and not btf:
            continue  # detect() never reports these without BTF
        f = features(
            btf=btf,
            btf_error=None if btf else "none",
            fentry=fentry,
            fentry_reason="" if fentry else "refused",
            kprobes=kprobes,
            tracepoints=TRACEPOINTS if tps else frozenset(),
            mark_victim_raw_task=raw,
            mark_victim_fields=RSS_FIELDS if rss else frozenset({"pid"}),
            cgroup2_memory=cgroup2,
        )
        plans = [plan(f)]
        for probe in PROBES:
            once = plans[0].downgrade(probe, "refused", f)
            plans += [once, once.downgrade(probe, "refused", f)]
        for p, constants in itertools.product(plans, (CONSTANTS, CONSTANTS_WITH_OPTIONAL) if btf else ({},)):
            values = bpf_source.defines(p, f, constants if p.btf else {}, 10.0)
            # Mark_victim flags only matter to the format-file tracepoint body.
            if values["OOM_KILL_TIER"] != 3:
                values.update(MARK_VICTIM_RAW=0, MARK_VICTIM_HAS_RSS=0)
            elif values["MARK_VICTIM_RAW"]:
                values.update(MARK_VICTIM_HAS_RSS=0)
            key = tuple(sorted(values.items()))
            ident = ",".join(
                [
                    "btf" if btf else "nobtf",
                    *(f"{c.probe}={c.tier}" for c in p.choices),
                    "raw" if raw else "fmt",
                    "rss" if rss else "pid",
                    "v2mem" if cgroup2 else "nov2mem",
                    "optional" if constants is CONSTANTS_WITH_OPTIONAL else "required",
                ]
            )
            cases.setdefault(key, pytest.param(f, p, constants, id=ident))
    return list(cases.values())


MATRIX = feature_matrix()


def problems(text: str) -> list[str]:
    """What clang would reject in the program text as the preprocessor leaves it."""
    try:
        kept, macros = preprocess(text)
    except Undefined as err:
        return [f"#if reads undefined macro {err} (the preprocessor reads it as 0)"]
    known = set(macros) | enum_constants(kept) | BCC_MACROS
    used = {name for name in re.findall(r"\b[A-Z_][A-Z0-9_]*[A-Z]\w*\b", kept) if name.isupper()}
    helpers = static_functions(text)
    called = {name for name in re.findall(r"\b(\w+)\s*\(", kept) if name in helpers}
    return [f"constant {name} used but never defined" for name in sorted(used - known)] + [
        f"helper {name}() called but compiled out" for name in sorted(called - static_functions(kept))
    ]


@pytest.mark.parametrize(("f", "p", "constants"), MATRIX)
def test_selected_program_text_uses_only_what_it_defines(
    f: KernelFeatures, p: Plan, constants: dict[str, int]
) -> None:
    _, _, text = build(f, p, constants=constants)
    assert problems(text) == []


def test_the_check_rejects_struct_reading_probes_without_btf() -> None:
    """A plan the planner never makes, to show the check above can fail."""
    f = features(**NO_BTF)
    good = plan(f)
    bad = dataclasses.replace(
        good, choices=tuple(dataclasses.replace(c, tier=schema.KPROBE, target="x") for c in good.choices)
    )
    found = problems(build(f, bad)[2])
    assert "helper memcg_id() called but compiled out" in found
    assert "constant OFF_OC_MEMCG used but never defined" in found


def test_the_plan_matrix_covers_every_tier_of_every_probe() -> None:
    seen = {(c.probe, c.tier) for param in MATRIX for c in param.values[1].choices}
    expected = {(p, t) for p in PROBES for t in (schema.FENTRY, schema.KPROBE, schema.UNAVAILABLE)}
    expected |= {(probes.OOM_KILL, schema.TRACEPOINT), (probes.NEAR_OOM, schema.TRACEPOINT)}
    assert expected <= seen


def test_preprocessor_catches_an_undefined_tier_macro() -> None:
    """The check above can fail: a misspelt macro in an #if is reported."""
    with pytest.raises(Undefined, match="NEAR_OOM_TEIR"):
        preprocess("#define OOMTRACE_TIER_FENTRY 1\n#if NEAR_OOM_TEIR == OOMTRACE_TIER_FENTRY\nx\n#endif\n")


def test_preprocessor_keeps_the_first_true_branch_only() -> None:
    kept, _ = preprocess(
        "#define A 2\n#if A == 1\none\n#elif A == 2\ntwo\n#elif A == 2\nagain\n#else\nelse\n#endif\n"
    )
    assert kept.split() == ["two"]


def test_preprocessor_skips_ifs_nested_in_a_false_branch_without_reading_them() -> None:
    kept, _ = preprocess("#define A 0\n#if A\n#if UNDEFINED\nx\n#endif\n#else\ny\n#endif\n")
    assert kept.split() == ["y"]
