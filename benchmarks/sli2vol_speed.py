"""Sli2Vol encoder speed on the CPU against its FLOP count at the machine's measured convolution throughput.

Per slice, the encoder (``Sli2VolNet.encode``: edge profile, then the full-resolution residual encoder) is timed
and compared with the FLOP-bound time: its FLOPs divided by the throughput of a dense 3x3 convolution
(64 -> 64 channels, same slice size and batch; the fastest of ``nn.Conv2d`` contiguous, ``nn.Conv2d``
channels-last and oneDNN with a pre-reordered weight) measured in the same process on the same thread count.
``ratio`` = measured / FLOP-bound: 1 means the encoder runs as fast as a large dense convolution does; the aim
is under 1.5.

Variants, for the shipped encoder (``configs/inference.json``: channels (16, 32, 64), 32 features) and the
paper-sized one (channels (16, 32, 64, 128), 64 features), at each batch (slices per ``encode`` call, the
propagator's ``block_size``):

- ``plain``: the layers one by one (``encoder.fused_inference = False``), contiguous (NCHW) tensors;
- ``plain_cl``: the same with the module and its input in channels-last memory format;
- ``fused``: the default eval path (``ResidualEncoder.forward_fused``: batch norm folded into the convolutions,
  channels-last, ReLU and residual additions as oneDNN post-ops);
- ``compiled``: ``torch.compile`` (TorchInductor, ``freezing=True``) of the plain path, channels-last; its
  compile time is reported separately, since every new slice size or batch compiles again.

Timings are medians over repeats after a warm-up; the variants and the reference convolution run interleaved
(one call of each per repeat), so that a change of machine load hits them alike. The spread (min-max) is shown.

Example::

    python benchmarks/sli2vol_speed.py --threads 2 --batches 1 4 8 16 --output work/sli2vol_speed.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from common.sli2vol import Sli2VolNet  # noqa: E402
from common.sli2vol import network as sli2vol_module  # noqa: E402

INFERENCE_CONFIG = REPO / "bundles" / "sli2vol" / "configs" / "inference.json"
PAPER_ENCODER = {"channels": (16, 32, 64, 128), "blocks_per_stage": 2, "feature_channels": 64}
VARIANTS = {  # name: (fused path, channels-last module and input, torch.compile)
    "plain": (False, False, False),
    "plain_cl": (False, True, False),
    "fused": (True, False, False),
    "compiled": (False, True, True),
}


def shipped_encoder_config() -> dict:
    """The encoder arguments of the bundle's ``network_def`` (channels, blocks_per_stage, feature_channels)."""
    network_def = json.loads(INFERENCE_CONFIG.read_text())["network_def"]
    return {key: network_def[key] for key in ("channels", "blocks_per_stage", "feature_channels")}


@contextlib.contextmanager
def num_threads(threads: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)``, restoring the previous count after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def encoder_flops(network: Sli2VolNet, height: int, width: int) -> float:
    """FLOPs (2 x multiply-adds) of one slice through ``network.encode``: every convolution, analytically.

    Each ``nn.Conv2d`` counts 2 * Cin/groups * Cout * kh * kw * Hout * Wout (shapes taken by forward hooks on a
    meta-device copy, so nothing is computed); the edge profile's difference convolution (1 -> 48 channels, 7x7:
    x(p) - x(p + d) for every neighbour d) is counted the same way from its kernel. Batch norm, ReLU, the residual
    additions, the edge profile's softmax and padding are ignored (a few FLOPs per pixel and channel, memory-bound
    rather than compute-bound; in the fused path batch norm is folded into the convolutions and costs nothing).

    Args:
        network: a :class:`~common.sli2vol.Sli2VolNet` (not modified).
        height: slice height H.
        width: slice width W.

    Returns:
        FLOPs per slice.
    """
    meta = copy.deepcopy(network).to("meta").eval()
    meta.encoder.fused_inference = False  # the fused path bypasses the modules' forward, hence the hooks
    total = 0.0

    def count(module: nn.Conv2d, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        kernel_h, kernel_w = module.kernel_size
        per_output = 2 * module.in_channels // module.groups * kernel_h * kernel_w
        total += per_output * output.shape[1] * output.shape[2] * output.shape[3]

    handles = [m.register_forward_hook(count) for m in meta.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            meta.encoder(torch.empty(1, meta.encoder.layers[0].in_channels, height, width, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    kernels = getattr(network.edge_profile, "difference_kernels", None)
    if kernels is not None:  # (48, 1, 7, 7): out_channels * in_channels * kh * kw per output pixel
        total += 2 * kernels.numel() * height * width
    return total


REFERENCE_IMPLEMENTATIONS = ("contiguous", "channels_last", "onednn_packed")


def _reference_conv(channels: int, height: int, width: int, batch: int, implementation: str) -> Callable[[], None]:
    """One call of a dense 3x3 convolution, ``channels`` -> ``channels``, on a (batch, channels, H, W) input.

    ``implementation``: "contiguous" (``nn.Conv2d``, NCHW), "channels_last" (``nn.Conv2d``, NHWC) or
    "onednn_packed" (oneDNN's convolution on NHWC with the weight reordered beforehand, as TorchInductor and the
    fused encoder run it; CPU builds with oneDNN only).
    """
    conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False).eval()
    x = torch.randn(batch, channels, height, width)
    if implementation != "contiguous":
        conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    if implementation == "onednn_packed":
        packed = torch.ops.mkldnn._reorder_convolution_weight(
            conv.weight.detach(), [1, 1], [1, 1], [1, 1], 1, list(x.shape)
        )

        def run() -> None:
            torch.ops.mkldnn._convolution_pointwise(x, packed, None, [1, 1], [1, 1], [1, 1], 1, "none", [], "")

        return run

    def run() -> None:
        with torch.no_grad():
            conv(x)

    return run


def _reference_implementations() -> tuple[str, ...]:
    """The implementations of the reference convolution this build runs."""
    return REFERENCE_IMPLEMENTATIONS if sli2vol_module._ONEDNN_FUSION else REFERENCE_IMPLEMENTATIONS[:2]


def _conv_flops(channels: int, height: int, width: int, batch: int) -> float:
    return 2.0 * channels * channels * 9 * height * width * batch


def _call_times(run: Callable[[], object], repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def _slices(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """(batch, 1, H, W) smooth random images in [0, 255], the encoder's input range."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(batch, 1, height + 8, width + 8, generator=generator)
    smooth = F.avg_pool2d(noise, 9, stride=1)
    smooth = (smooth - smooth.amin()) / (smooth.amax() - smooth.amin())
    return smooth * 255.0


def _prepare(
    network: Sli2VolNet, slices: torch.Tensor, fused: bool, channels_last: bool, compiled: bool
) -> tuple[Callable[[], torch.Tensor], float]:
    """A zero-argument call of one encoder variant, warmed up; and its warm-up (compile) seconds.

    The network is copied; ``fused`` sets ``encoder.fused_inference``, ``channels_last`` converts module and input,
    ``compiled`` wraps ``encode`` in ``torch.compile`` with TorchInductor freezing (weights folded as constants).
    """
    model = copy.deepcopy(network).eval()
    model.encoder.fused_inference = fused
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        slices = slices.contiguous(memory_format=torch.channels_last)
    encode = model.encode
    if compiled:
        torch._dynamo.reset()
        encode = torch.compile(model.encode, dynamic=False)

    def run() -> torch.Tensor:
        with torch.no_grad():
            return encode(slices)

    start = time.perf_counter()
    if compiled:
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):
            run()
    run()
    return run, time.perf_counter() - start


def encoder_efficiency(
    threads: int = 2,
    height: int = 190,
    width: int = 140,
    batches: Sequence[int] = (1, 4, 8, 16),
    variants: Sequence[str] = tuple(VARIANTS),
    encoders: dict[str, dict] | None = None,
    repeats: int = 3,
) -> dict:
    """Per slice, measured seconds against the FLOP-bound seconds, for each encoder, batch and variant.

    For each encoder and batch, the variants and the reference convolution (a dense 3x3, 64 -> 64 channels, at the
    same batch) are warmed up, then run interleaved ``repeats`` times; the limit is the reference's median
    FLOP/s, the fastest of its implementations (:func:`_reference_conv`).

    Args:
        threads: intra-op threads (``torch.set_num_threads``).
        height: slice height.
        width: slice width.
        batches: slices per ``encode`` call.
        variants: names from :data:`VARIANTS`.
        encoders: name -> ``Sli2VolNet`` encoder arguments; default the shipped and the paper-sized encoders.
        repeats: timed calls per variant (median).

    Returns:
        ``{"threads", "height", "width", "torch", "rows": [...], "compile_errors": {...}}``; each row has encoder,
        variant, batch, ``flops_per_slice``, ``seconds_per_slice`` (median), ``seconds_min``/``seconds_max`` (per
        slice), ``limit_flops_per_second``, ``flop_bound_seconds_per_slice``, ``ratio`` (measured / FLOP-bound),
        and ``warmup_seconds`` (the compile time for ``compiled``).
    """
    encoders = encoders or {"shipped": shipped_encoder_config(), "paper": PAPER_ENCODER}
    rows, compile_errors = [], {}
    with num_threads(threads):
        for encoder_name, arguments in encoders.items():
            torch.manual_seed(0)
            network = Sli2VolNet(**arguments).eval()
            flops = encoder_flops(network, height, width)
            for batch in batches:
                slices = _slices(batch, height, width)
                runs, warmups = {}, {}
                for variant in variants:
                    try:
                        runs[variant], warmups[variant] = _prepare(network, slices, *VARIANTS[variant])
                    except Exception as error:  # compile can fail on a CPU build without a working toolchain
                        compile_errors[f"{encoder_name}/{variant}/batch {batch}"] = f"{type(error).__name__}: {error}"
                references = {
                    impl: _reference_conv(64, height, width, batch, impl) for impl in _reference_implementations()
                }
                for reference in references.values():
                    reference()
                times = {name: [] for name in [*runs, *references]}
                for _ in range(repeats):
                    for name, run in [*runs.items(), *references.items()]:
                        times[name].extend(_call_times(run, 1))
                fastest = min(references, key=lambda impl: statistics.median(times[impl]))
                limit = _conv_flops(64, height, width, batch) / statistics.median(times[fastest])
                for variant in runs:
                    seconds = statistics.median(times[variant]) / batch
                    rows.append(
                        {
                            "encoder": encoder_name,
                            "variant": variant,
                            "batch": batch,
                            "flops_per_slice": flops,
                            "seconds_per_slice": seconds,
                            "seconds_min": min(times[variant]) / batch,
                            "seconds_max": max(times[variant]) / batch,
                            "limit_flops_per_second": limit,
                            "limit_implementation": fastest,
                            "reference_flops_per_second": {
                                impl: _conv_flops(64, height, width, batch) / statistics.median(times[impl])
                                for impl in references
                            },
                            "flop_bound_seconds_per_slice": flops / limit,
                            "ratio": seconds * limit / flops,
                            "warmup_seconds": warmups[variant],
                        }
                    )
                print(f"{encoder_name} batch {batch}: done", file=sys.stderr, flush=True)
    return {
        "threads": threads,
        "height": height,
        "width": width,
        "repeats": repeats,
        "torch": torch.__version__,
        "rows": rows,
        "compile_errors": compile_errors,
    }


def markdown_table(results: dict) -> str:
    """The rows of :func:`encoder_efficiency` as a Markdown table.

    ``ratio`` holds each row to the reference convolution at its own batch; ``ratio at best`` to the fastest
    reference of the run (all batches), which also charges a small batch for the throughput it leaves unused.
    """
    best = max(row["limit_flops_per_second"] for row in results["rows"])
    lines = [
        f"Slices {results['height']}×{results['width']}, {results['threads']} threads, torch {results['torch']}, "
        f"median of {results['repeats']} (min–max); best limit {best / 1e9:.0f} GFLOP/s.",
        "",
        "| encoder | variant | batch | GFLOP/slice | ms/slice (min–max) | limit GFLOP/s | FLOP-bound ms/slice "
        "| ratio | ratio at best | warm-up s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['encoder']} | {row['variant']} | {row['batch']} | {row['flops_per_slice'] / 1e9:.2f} "
            f"| {row['seconds_per_slice'] * 1e3:.0f} ({row['seconds_min'] * 1e3:.0f}–{row['seconds_max'] * 1e3:.0f}) "
            f"| {row['limit_flops_per_second'] / 1e9:.0f} | {row['flop_bound_seconds_per_slice'] * 1e3:.0f} "
            f"| {row['ratio']:.2f} | {row['seconds_per_slice'] * best / row['flops_per_slice']:.2f} "
            f"| {row['warmup_seconds']:.1f} |"
        )
    for name, error in results["compile_errors"].items():
        lines.append(f"\n{name}: compile failed: {error}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--height", type=int, default=190)
    parser.add_argument("--width", type=int, default=140)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--encoders", nargs="+", default=["shipped", "paper"], choices=["shipped", "paper"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    available = {"shipped": shipped_encoder_config(), "paper": PAPER_ENCODER}
    results = encoder_efficiency(
        args.threads,
        args.height,
        args.width,
        args.batches,
        args.variants,
        {name: available[name] for name in args.encoders},
        args.repeats,
    )
    print(markdown_table(results))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
