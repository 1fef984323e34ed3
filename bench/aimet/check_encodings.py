"""Load onnxmp's AIMET encodings into the real AIMET (aimet-onnx) and compare outputs.

Run with the AIMET virtualenv (see README.md in this folder), not the project's Python:

    /tmp/aimet-venv/bin/python bench/aimet/check_encodings.py --model models/digits_cnn.onnx \
        --encodings out/encodings.json --calib models/digits_calib.npz --qdq out/model.qdq.onnx

For every sim variant it builds aimet_onnx.QuantizationSimModel (config "default": per-channel
Conv/Gemm weights, min-max) on the float model, loads the file with
load_encodings_to_sim(strict=False), audits what AIMET did with each encoding (applied as
written, rejected, ignored, overwritten through a tie; and the tensors AIMET would quantize that
the file lacks), runs the sim on the calibration inputs and prints the SQNR of AIMET-sim against
onnxmp's QDQ model run by ONNX Runtime, both as plain fake-quant (graph optimizations off) and
as ORT_ENABLE_ALL runs it (QDQ fused into integer kernels). Variants:

* bn_fold=none: the user's original model, as given (BN nodes stay; AIMET warns);
* bn_fold=aimet: after aimet_onnx.batch_norm_fold.fold_all_batch_norms_to_weight (AIMET's
  documented flow), file as written;
* bn_fold=aimet-mapped: same, with the file's BN-output / BN-beta names renamed to the names
  AIMET's fold leaves (conv output; conv bias or '<conv node>.bias');
* tie=on/off: AIMET's default ties Concat/Relu/AveragePool input and output quantizers
  (quantsim._tie_qtzrs); off builds the sim under quantsim._apply_constraints(False).

It also converts the file with AIMET's encodings_to_onnx_qdq (no sim config, a direct
translation) and compares that model too. Models without BatchNormalization run bn_fold=none only.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import logging
from dataclasses import dataclass

import aimet_onnx
import numpy as np
import onnx
import onnxruntime as ort
from aimet_onnx import quantsim
from aimet_onnx.batch_norm_fold import fold_all_batch_norms_to_weight


@dataclass(frozen=True)
class FileEncoding:
    """One tensor of the encodings file, whatever its version."""

    name: str
    is_param: bool
    bits: int
    scales: tuple[float, ...]
    offsets: tuple[int, ...]


@dataclass(frozen=True)
class Variant:
    bn_fold: (
        str  # "none", "aimet" (AIMET folds, file as written), "aimet-mapped" (BN names renamed)
    )
    tie: bool

    @property
    def label(self) -> str:
        return f"bn_fold={self.bn_fold} tie={'on' if self.tie else 'off'}"


def read_encodings(path: str) -> tuple[str, dict, dict[str, FileEncoding]]:
    """(version, the raw file, its entries keyed by tensor name)."""
    with open(path) as f:
        raw = json.load(f)
    version = raw["version"]
    entries = {}
    for section, is_param in (("param_encodings", True), ("activation_encodings", False)):
        if version == "0.6.1":
            items = raw[section].items()
            for name, per_channel in items:
                entries[name] = FileEncoding(
                    name,
                    is_param,
                    int(per_channel[0]["bitwidth"]),
                    tuple(float(e["scale"]) for e in per_channel),
                    tuple(int(e["offset"]) for e in per_channel),
                )
        else:
            for e in raw[section]:
                entries[e["name"]] = FileEncoding(
                    e["name"],
                    is_param,
                    int(e["bw"]),
                    tuple(float(s) for s in e["scale"]),
                    tuple(int(o) for o in e["offset"]),
                )
    return version, raw, entries


def validate_format(raw: dict, version: str) -> str:
    """AIMET's own layout check of an encodings file (the one encodings_to_onnx_qdq runs)."""
    try:
        quantsim._validate_encodings(raw, version)  # pylint: disable=protected-access
    except ValueError as e:
        return f"REJECTED: {e}"
    return "ok"


def session(model, level: ort.GraphOptimizationLevel) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def run_session(sess, feeds: dict[str, np.ndarray], batch: int) -> list[np.ndarray]:
    n = len(next(iter(feeds.values())))
    chunks = [
        sess.run(None, {k: v[i : i + batch] for k, v in feeds.items()}) for i in range(0, n, batch)
    ]
    return [np.concatenate([c[j] for c in chunks]) for j in range(len(chunks[0]))]


def sqnr_db(reference: list[np.ndarray], test: list[np.ndarray]) -> float:
    """10 log10(signal/noise), float64 sums; noise-to-signal averaged over outputs."""
    nsr = []
    for r, t in zip(reference, test, strict=False):
        r64, t64 = r.astype(np.float64), t.astype(np.float64)
        nsr.append(np.sum((r64 - t64) ** 2) / np.sum(r64**2))
    mean = float(np.mean(nsr))
    return float("inf") if mean == 0 else -10.0 * np.log10(mean)


def top1_agreement(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(
        np.mean(a[0].reshape(len(a[0]), -1).argmax(1) == b[0].reshape(len(b[0]), -1).argmax(1))
        * 100
    )


def default_bits(entries: dict[str, FileEncoding]) -> tuple[int, int]:
    """Most common weight and activation bit-widths of the file (int32 biases left out)."""
    w = collections.Counter(e.bits for e in entries.values() if e.is_param and e.bits < 32)
    a = collections.Counter(e.bits for e in entries.values() if not e.is_param)
    return (w.most_common(1)[0][0] if w else 8), (a.most_common(1)[0][0] if a else 8)


def bn_followed_weights(model: onnx.ModelProto) -> dict[str, str]:
    """Weight name -> BatchNormalization node, for Conv/Gemm/ConvTranspose feeding a BN."""
    consumers = collections.defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            consumers[name].append(node)
    out = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(node.input) > 1:
            after = consumers[node.output[0]]
            if len(after) == 1 and after[0].op_type == "BatchNormalization":
                out[node.input[1]] = after[0].name
    return out


def bn_aliases(model: onnx.ModelProto) -> dict[str, str]:
    """Our names -> the names AIMET's fold_all_batch_norms_to_weight leaves.

    AIMET removes the BN node (its output name disappears; consumers read the conv output) and
    keeps the folded bias under the conv's bias name, or creates '<conv node name>.bias'.
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    aliases = {}
    for node in model.graph.node:
        conv = producer.get(node.input[0]) if node.op_type == "BatchNormalization" else None
        if conv is None or conv.op_type not in ("Conv", "ConvTranspose", "Gemm"):
            continue
        aliases[node.output[0]] = conv.output[0]
        aliases[node.input[2]] = (
            conv.input[2] if len(conv.input) > 2 and conv.input[2] else conv.name + ".bias"
        )
    return aliases


def build_sim(model: onnx.ModelProto, variant: Variant, bits: tuple[int, int]):
    model = copy.deepcopy(model)
    if variant.bn_fold != "none":
        fold_all_batch_norms_to_weight(model)
    with quantsim._apply_constraints(variant.tie):  # pylint: disable=protected-access
        return quantsim.QuantizationSimModel(
            model,
            param_type=f"int{bits[0]}",
            activation_type=f"int{bits[1]}",
            quant_scheme="min_max",
            config_file="default",
            session_options_kwargs={"intra_op_num_threads": 2},
        )


def renamed_file(raw: dict, version: str, drop: set[str], rename: dict[str, str]) -> dict:
    """The file without the `drop` names and with `rename` applied."""
    out = copy.deepcopy(raw)
    for section in ("param_encodings", "activation_encodings"):
        if version == "0.6.1":
            out[section] = {rename.get(k, k): v for k, v in out[section].items() if k not in drop}
        else:
            out[section] = [
                e | {"name": rename.get(e["name"], e["name"])}
                for e in out[section]
                if e["name"] not in drop
            ]
    return out


def renamed_entries(
    entries: dict[str, FileEncoding], rename: dict[str, str]
) -> dict[str, FileEncoding]:
    return {
        rename.get(k, k): FileEncoding(rename.get(k, k), e.is_param, e.bits, e.scales, e.offsets)
        for k, e in entries.items()
    }


def raw_names(raw: dict, version: str) -> list[str]:
    sections = (raw["param_encodings"], raw["activation_encodings"])
    return [
        n for sec in sections for n in (sec if version == "0.6.1" else [e["name"] for e in sec])
    ]


def quantizer_state(q) -> tuple[int, tuple[float, ...], tuple[int, ...]] | None:
    encs = q.get_encodings()
    if not q.enabled or not encs:
        return None
    return int(encs[0].bw), tuple(float(e.delta) for e in encs), tuple(int(e.offset) for e in encs)


def matches(e: FileEncoding, state) -> bool:
    if state is None:
        return False
    bits, scales, offsets = state
    return (
        bits == e.bits
        and len(scales) == len(e.scales)
        and np.allclose(scales, e.scales, rtol=1e-5, atol=0)
        and offsets == e.offsets
    )


def audit(
    sim, entries: dict[str, FileEncoding], not_in_model: set[str], enabled_before: set[str]
) -> dict[str, list[str]]:
    """Reason -> tensor names: encodings AIMET did not apply as written, and extra AIMET quantizers."""
    found = collections.defaultdict(list)
    for name in sorted(not_in_model):
        found["REJECTED: tensor not in this model (dropped before load_encodings_to_sim)"].append(
            name
        )
    qdict = sim.qc_quantize_op_dict
    names_of = collections.defaultdict(list)
    for name, q in qdict.items():
        names_of[id(q)].append(name)
    for name, e in sorted(entries.items()):
        if name in not_in_model:
            continue
        state = quantizer_state(qdict[name])
        if matches(e, state):
            continue
        tied = [n for n in names_of[id(qdict[name])] if n != name]
        if state is None and e.bits >= 32:
            found[
                "ignored: int32 bias encoding; AIMET disables bias quantizers >= 32 bit after loading"
            ].append(name)
        elif state is None:
            found["disabled by AIMET after loading"].append(name)
        elif tied:
            winner = [n for n in tied if n in entries and matches(entries[n], state)]
            found[
                f"OVERWRITTEN: AIMET ties {sorted([name] + tied)} into one quantizer, which keeps the encoding of {winner}"
            ].append(name)
        else:
            found[
                f"CHANGED: sim holds bw={state[0]} scale[0]={state[1][0]:.6g} offset[0]={state[2][0]}"
            ].append(name)
    for name in sorted(enabled_before - entries.keys()):
        now = quantizer_state(qdict[name])
        if now is None:
            found["AIMET quantizes by default, file lacks -> disabled by the load"].append(name)
        else:
            tied = [n for n in names_of[id(qdict[name])] if n != name]
            found[
                f"AIMET quantizes by default, file lacks -> STILL QUANTIZED through its tie with {tied}"
            ].append(name)
    return found


def print_audit(found: dict[str, list[str]], entries: dict[str, FileEncoding], limit: int) -> None:
    not_applied = sum(len(v) for k, v in found.items() if not k.startswith("AIMET quantizes"))
    print(f"   encodings applied exactly as written: {len(entries) - not_applied}/{len(entries)}")
    for reason, names in found.items():
        shown = (
            names
            if limit <= 0 or len(names) <= limit
            else names[:limit] + [f"... ({len(names) - limit} more)"]
        )
        print(f"   - {reason}: {len(names)}: {', '.join(shown)}")


def check_variant(model, variant, raw, version, entries, feeds, ours, floats, batch, limit) -> None:
    sim = build_sim(model, variant, default_bits(entries))
    print(f"\n== AIMET QuantizationSimModel, {variant.label}")
    rename = {}
    if variant.bn_fold == "aimet-mapped":
        rename = {k: v for k, v in bn_aliases(model).items() if k in entries}
        print(f"   loaded under AIMET's post-fold names: {rename}")
        entries = renamed_entries(entries, rename)
    if variant.bn_fold == "none":
        for weight, bn in bn_followed_weights(model).items():
            if weight in entries:
                print(
                    f"   note: {weight} feeds BatchNormalization {bn} in this model; the file's scales are "
                    f"those of the BN-folded weight, applied here to the unfolded one"
                )
    enabled_before = {n for n, q in sim.qc_quantize_op_dict.items() if q.enabled}
    products = sim.connected_graph.get_all_products()
    not_in_model = {n for n in entries if n not in sim.qc_quantize_op_dict and n not in products}
    to_load = renamed_file(
        raw,
        version,
        {k for k in raw_names(raw, version) if rename.get(k, k) in not_in_model},
        rename,
    )
    mismatches = quantsim.load_encodings_to_sim(sim, to_load, strict=False)
    aimet = run_session(sim.session, feeds, batch)
    print(
        f"   sim quantizers: {len(sim.qc_quantize_op_dict)} ({len(enabled_before)} enabled by AIMET's default config); "
        f"settings mismatches reported by load_encodings_to_sim: {len(mismatches)}"
    )
    print_audit(audit(sim, entries, not_in_model, enabled_before), entries, limit)
    print_scores("AIMET-sim", aimet, ours, floats)


def print_scores(label: str, theirs, ours: dict[str, list[np.ndarray]], floats) -> None:
    fq, fused = ours["fake-quant"], ours["ORT int kernels"]
    print(
        f"   SQNR {label} vs onnxmp QDQ: {sqnr_db(fq, theirs):.2f} dB (QDQ as fake-quant, ORT optimizations off), "
        f"{sqnr_db(fused, theirs):.2f} dB (ORT_ENABLE_ALL: QDQ fused into integer kernels); "
        f"top-1 agreement {top1_agreement(fq, theirs):.1f} %"
    )
    print(
        f"   SQNR vs float: {label} {sqnr_db(floats, theirs):.2f} dB; onnxmp QDQ {sqnr_db(floats, fq):.2f} dB "
        f"(fake-quant), {sqnr_db(floats, fused):.2f} dB (ORT_ENABLE_ALL)"
    )


def check_direct_qdq(model, raw, feeds, ours, floats, batch) -> None:
    print("\n== AIMET encodings_to_onnx_qdq(original model, file) (no sim config)")
    try:
        qdq = aimet_onnx.encodings_to_onnx_qdq(model, raw)
    except Exception as e:  # report whatever AIMET raises, as it words it
        print(f"   REJECTED: {type(e).__name__}: {e}")
        return
    sess = session(qdq.SerializeToString(), ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    print_scores("AIMET-QDQ", run_session(sess, feeds, batch), ours, floats)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="the user's float ONNX model")
    p.add_argument("--encodings", required=True, help="onnxmp's encodings.json (1.0.0 or 0.6.1)")
    p.add_argument("--calib", required=True, help=".npz keyed by model input name")
    p.add_argument("--qdq", required=True, help="onnxmp's model.qdq.onnx")
    p.add_argument("--num-samples", type=int, default=None, help="first N samples only")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--bn-fold", choices=["none", "aimet", "aimet-mapped", "all"], default="all")
    p.add_argument("--tie", choices=["on", "off", "both"], default="both")
    p.add_argument("--list", type=int, default=8, help="names shown per audit line (0: all)")
    p.add_argument("-v", "--verbose", action="store_true", help="keep AIMET's INFO logging")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if not args.verbose:
        for name in list(logging.root.manager.loggerDict):
            logging.getLogger(name).setLevel(logging.WARNING)
    model = onnx.load(args.model)
    feeds = {k: v[: args.num_samples] for k, v in np.load(args.calib).items()}
    levels = {
        "fake-quant": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "ORT int kernels": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    ours = {
        k: run_session(session(args.qdq, level), feeds, args.batch_size)
        for k, level in levels.items()
    }
    floats = run_session(
        session(args.model, ort.GraphOptimizationLevel.ORT_DISABLE_ALL), feeds, args.batch_size
    )
    version, raw, entries = read_encodings(args.encodings)
    n_params = sum(e.is_param for e in entries.values())
    print(
        f"aimet_onnx {aimet_onnx.__version__}; file version {version}: {n_params} param + "
        f"{len(entries) - n_params} activation encodings; {len(next(iter(feeds.values())))} samples"
    )
    print(f"AIMET format validation (_validate_encodings): {validate_format(raw, version)}")
    has_bn = any(n.op_type == "BatchNormalization" for n in model.graph.node)
    folds = ["none", "aimet", "aimet-mapped"] if args.bn_fold == "all" else [args.bn_fold]
    if not has_bn:
        folds = ["none"]
        print("model has no BatchNormalization: bn_fold variants skipped")
    ties = {"on": [True], "off": [False], "both": [True, False]}[args.tie]
    for bn_fold in folds:
        for tie in ties:
            check_variant(
                model,
                Variant(bn_fold, tie),
                raw,
                version,
                entries,
                feeds,
                ours,
                floats,
                args.batch_size,
                args.list,
            )
    check_direct_qdq(model, raw, feeds, ours, floats, args.batch_size)


if __name__ == "__main__":
    main()
