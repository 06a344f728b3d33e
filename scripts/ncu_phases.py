"""Where a kernel's time goes, phase by phase: reads the SASS source page of an ncu report (profiled with
`--set full --import-source yes`, e.g. through scripts/ncu_case.py) and cuts the kernel at every barrier (BAR.*) and
EXIT, in SASS order. Per phase: share of the warp-state samples, instructions executed, shared-memory wavefronts and
tensor-core instructions per CTA (HMMA, HGMMA), the top stall reasons and the opcodes that hold the most samples.
    ncu -i report.ncu-rep --page source --csv --print-source sass > report_sass.csv
    python3 scripts/ncu_phases.py report_sass.csv <CTAs in the grid> [min share, default 0.005]"""
import csv
import sys


def number(text):
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def opcode(source):
    words = source.split()
    return words[1] if words and words[0].startswith("@") and len(words) > 1 else (words[0] if words else "")


def main(path, ctas, min_share):
    rows = list(csv.reader(open(path)))
    header, lines = rows[1], rows[2:]  # row 0 names the kernel
    col = {name: i for i, name in enumerate(header)}
    samples, executed = col["Warp Stall Sampling (All Samples)"], col["Instructions Executed"]
    wavefronts = col["L1 Wavefronts Shared"]
    stalls = [name for name in header if name.startswith("stall_") and "Not Issued" not in name]
    total = sum(number(r[samples]) for r in lines) or 1.0

    def new_phase(start):
        return {"start": start, "samples": 0.0, "executed": 0.0, "wavefronts": 0.0, "hmma": 0.0,
                "stalls": dict.fromkeys(stalls, 0.0), "ops": {}}

    phases, phase = [], new_phase(0)
    for index, r in enumerate(lines):
        op = opcode(r[1].strip())
        phase["samples"] += number(r[samples])
        phase["executed"] += number(r[executed])
        phase["wavefronts"] += number(r[wavefronts])
        if op.startswith(("HMMA", "HGMMA")):
            phase["hmma"] += number(r[executed])
        base = op.split(".")[0]
        phase["ops"][base] = phase["ops"].get(base, 0.0) + number(r[samples])
        for name in stalls:
            phase["stalls"][name] += number(r[col[name]])
        if op.startswith("BAR") or op == "EXIT":
            phase["end"], phase["label"] = index, op
            phases.append(phase)
            phase = new_phase(index + 1)
    phase["end"], phase["label"] = len(lines) - 1, "(end)"
    phases.append(phase)

    print(f"{'SASS lines':>13s} {'ends at':18s} {'share':>6s} {'instr/CTA':>9s} {'wavefr/CTA':>10s} {'MMA/CTA':>8s}"
          "  top stalls | top opcodes (share of all samples)")
    for p in phases:
        if p["samples"] < min_share * total:
            continue
        top_stalls = sorted(p["stalls"].items(), key=lambda kv: -kv[1])[:4]
        top_ops = sorted(p["ops"].items(), key=lambda kv: -kv[1])[:5]
        print(f"{p['start']:5d}-{p['end']:<7d} {p['label'][:18]:18s} {100 * p['samples'] / total:5.1f}%"
              f" {p['executed'] / ctas:9.0f} {p['wavefronts'] / ctas:10.0f} {p['hmma'] / ctas:8.0f}  "
              + " ".join(f"{name[6:]}:{100 * v / total:.1f}" for name, v in top_stalls) + " | "
              + " ".join(f"{name}:{100 * v / total:.1f}" for name, v in top_ops))


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 0.005)
