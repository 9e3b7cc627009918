"""`oomtrace probes`: which tier each probe would get on this kernel, and why, without attaching;
and the hidden `run --dump-bpf`: the exact program text `run` would compile."""

import argparse
import json


def dump_bpf(no_btf: bool, quiet_s: float) -> str:
    """The exact program text `run` would compile on this kernel."""
    from tracer.kernel import offsets, tiers
    from tracer.kernel import source as bpf_source
    from tracer.kernel.features import detect

    features = detect(use_btf=not no_btf)
    plan = tiers.plan(features)
    constants = offsets.kernel_constants(features.btf_data) if features.btf_data else {}
    return bpf_source.source(bpf_source.defines(plan, features, constants, quiet_s))


def command(args: argparse.Namespace) -> int:
    from tracer.kernel import tiers
    from tracer.kernel.features import detect
    from tracer.kernel.headers import HeadersError, find_headers

    features = detect(use_btf=not args.no_btf)
    plan = tiers.plan(features)
    try:
        tree = find_headers(features.release)
        where = {
            "running kernel": f"/lib/modules/{features.release}/build",
            "kheaders": "/sys/kernel/kheaders.tar.xz",
        }
        headers = f"{tree.origin} ({tree.path or where[tree.origin]})"
        if not tree.matching:
            headers += "; struct offsets from BTF" if features.btf else "; no BTF: tracepoint fields only"
    except HeadersError as err:
        headers = f"none: {err}"
    report = {
        "kernel": features.release,
        "btf": features.btf,
        "btf_error": features.btf_error,
        "headers": headers,
        "probes": [
            {"probe": c.probe, "tier": c.tier, "target": c.target or None, "why_not_better": c.reason or None}
            for c in plan.choices
        ],
        "notes": list(plan.notes),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"kernel   {features.release}")
    print(
        "btf      "
        + ("yes: struct offsets from /sys/kernel/btf/vmlinux" if features.btf else str(features.btf_error))
    )
    print(f"headers  {headers}")
    print()
    print(f"{'PROBE':<16}{'TIER':<13}TARGET")
    for c in plan.choices:
        print(f"{c.probe:<16}{c.tier:<13}{c.target or '-'}")
        if c.reason:
            print(f"{'':<16}why not better: {c.reason}")
    for note in plan.notes:
        print(f"\nnote: {note}")
    return 0
