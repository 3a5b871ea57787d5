"""Detectors of vanishing and exploding gradients, on the monitor's measurements.

The signs a practitioner is taught, turned into checks with thresholds
(`model.config.MonitorConfig`):

- exploding: the pre-clipping gradient norm of the recurrent layers (where
  backpropagation through time multiplies it) stays above 1.0 on most recent
  steps, or the weights grow unexpectedly large (a recurrent kernel's norm
  multiplied by more than `weight_growth`); NaN or Inf stops training
  outright (see `model/gradient_monitor.py`).
- vanishing: the first recurrent layer's gradient is tiny, next to the output
  layer's or in absolute terms, while the training loss has stopped improving
  (over the second half of the steps so far).

Everything here is plain Python and NumPy on the rows the monitor keeps (one
dict per kept step), so `python -m pipelines.gradients report` can run the
same checks later from `gradients.csv`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from model.config import MonitorConfig, name_settings

MIN_STEPS = 10  # fewer kept steps than this: too early to judge


@dataclasses.dataclass
class Finding:
    """One warning: what was seen, the figures behind it, and what to do.

    Attributes:
        kind: `"exploding"`, `"vanishing"` or `"non_finite"`.
        message: One line: the verdict, the evidence and a remedy.
        evidence: The figures, for summary.json.
    """

    kind: str
    message: str
    evidence: dict[str, Any]


def layer_groups(labels: Sequence[str], recurrent_layers: Sequence[str]) -> list[dict[str, Any]]:
    """Group `<layer>/<part>` labels by layer, in model order.

    Args:
        labels: Variable labels from `MonitoredModel.gradient_labels`.
        recurrent_layers: Names of the recurrent layers.

    Returns:
        `[{"name": "lstm_0", "recurrent": True, "labels": [...]}, ...]`.
    """
    groups: dict[str, dict[str, Any]] = {}
    for label in labels:
        name = label.split("/")[0]
        groups.setdefault(name, {"name": name, "recurrent": name in recurrent_layers, "labels": []})
        groups[name]["labels"].append(label)
    return list(groups.values())


def layer_norms(rows: Sequence[dict[str, float]], layer: dict[str, Any], kind: str = "grad") -> np.ndarray:
    """Per kept step, the norm of a whole layer's gradients (`kind="grad"`) or weights (`"weight"`)."""
    parts = np.array([[row[f"{kind}/{label}"] for label in layer["labels"]] for row in rows])
    return np.sqrt((parts ** 2).sum(axis=1))


def _recent(values: np.ndarray) -> np.ndarray:
    """The second half of a run's steps: what persists, not the first steps' transient."""
    return values[len(values) // 2:]


def loss_improvement(rows: Sequence[dict[str, float]]) -> float:
    """Relative drop of the training loss over the second half of the steps.

    "Training stops improving after a few iterations": the first steps often
    fit what needs no memory (an output bias, the unigram frequencies), so the
    loss is compared between the start and the end of the second half, each
    averaged over a quarter of it (single batch losses are noisy).
    """
    losses = _recent(np.array([row["loss"] for row in rows]))
    quarter = max(1, len(losses) // 4)
    first, last = losses[:quarter].mean(), losses[-quarter:].mean()
    return float((first - last) / abs(first)) if first else 0.0


def recurrent_grad_norms(rows: Sequence[dict[str, float]], layers: Sequence[dict[str, Any]]) -> np.ndarray:
    """Per kept step, the pre-clipping gradient norm of all recurrent layers together.

    Backpropagation through time explodes there; the output layer's gradient
    is large whenever the loss is, which is no sign of trouble. Without
    recurrent layers, the global norm.
    """
    recurrent = [layer for layer in layers if layer["recurrent"]]
    if not recurrent:
        return np.array([row["grad_norm"] for row in rows])
    return np.sqrt(sum(layer_norms(rows, layer) ** 2 for layer in recurrent))


def check_exploding(rows: Sequence[dict[str, float]], layers: Sequence[dict[str, Any]],
                    initial_weight_norms: dict[str, float], config: MonitorConfig) -> Optional[Finding]:
    """Large pre-clipping norms on most recent steps, or recurrent kernels that grew too much."""
    norms = _recent(recurrent_grad_norms(rows, layers))
    share_large = float((norms > config.exploding_norm).mean())
    growth = {}
    for layer in layers:
        for label in layer["labels"]:
            start = initial_weight_norms.get(label, 0.0)
            if layer["recurrent"] and label.endswith("recurrent_kernel") and start > 0:
                growth[label] = rows[-1][f"weight/{label}"] / start
    worst = max(growth, key=growth.get) if growth else None
    grew = worst is not None and growth[worst] > config.weight_growth
    if share_large < config.exploding_share and not grew:
        return None
    evidence = {"share_steps_above": share_large, "threshold": config.exploding_norm,
                "median_recurrent_grad_norm": float(np.median(norms)), "max_recurrent_grad_norm": float(norms.max()),
                "median_global_grad_norm": float(np.median(_recent(np.array([r["grad_norm"] for r in rows])))),
                "largest_weight_growth": {worst: growth[worst]} if worst else {}}
    signs = []
    if share_large >= config.exploding_share:
        signs.append(f"the recurrent layers' gradient norm before clipping was above {config.exploding_norm:g} on "
                     f"{share_large:.0%} of recent steps (median {np.median(norms):.3g}, max {norms.max():.3g})")
    if grew:
        signs.append(f"{worst} grew {growth[worst]:.1f}x since the start")
    return Finding("exploding", "exploding gradients: " + "; ".join(signs) +
                   ". Remedy: keep clipping on ({clipnorm} 1.0), lower {learning_rate}, or use {cell} lstm/gru",
                   evidence)


def check_vanishing(rows: Sequence[dict[str, float]], layers: Sequence[dict[str, Any]],
                    config: MonitorConfig, through_time: Optional[dict[str, float]] = None) -> Optional[Finding]:
    """A tiny gradient in the first recurrent layer or at the first step, while the loss is flat."""
    recurrent = [layer for layer in layers if layer["recurrent"]]
    if not recurrent:
        return None
    first = recurrent[0]
    output = layers[-1]  # the head: the last layer with weights
    first_norms = _recent(layer_norms(rows, first))
    output_norms = _recent(layer_norms(rows, output))
    ratio = float(np.median(first_norms / np.maximum(output_norms, 1e-30)))
    median_first = float(np.median(first_norms))
    improvement = loss_improvement(rows)
    time_ratio = through_time["first_to_last"] if through_time else None
    signs = []
    if ratio < config.vanishing_ratio or median_first < config.vanishing_floor:
        signs.append(f"{first['name']}'s gradient norm is {median_first:.2e}, {ratio:.1e} of {output['name']}'s")
    # NaN: the last step's own gradient is 0, so nothing reaches back either.
    if time_ratio is not None and not time_ratio >= config.vanishing_time_ratio:
        signs.append(f"the gradient of the last step's loss reaching the first step of a sequence is "
                     f"{time_ratio:.1e} of the last step's")
    if not signs or improvement >= config.flat_loss:
        return None
    evidence = {"first_recurrent_layer": first["name"], "median_grad_norm": median_first,
                "ratio_to_output_layer": ratio, "output_layer": output["name"],
                "first_step_to_last_step": time_ratio, "loss_improvement": improvement}
    return Finding(
        "vanishing",
        "vanishing gradients: " + "; ".join(signs) + f"; the training loss improved only {improvement:.1%} "
        "over the recent steps. Remedy: use {cell} lstm or gru, shorten {seq_len}/{window}, "
        "or raise {learning_rate}", evidence)


def diagnose(rows: Sequence[dict[str, float]], layers: Sequence[dict[str, Any]],
             initial_weight_norms: dict[str, float], config: MonitorConfig,
             through_time: Optional[dict[str, float]] = None,
             setting_names: Optional[Mapping[str, str]] = None) -> list[Finding]:
    """Every detector on the rows so far.

    Args:
        rows: The monitor's kept steps.
        layers: From `layer_groups`.
        initial_weight_norms: Weight norm of each variable before training.
        config: Thresholds.
        through_time: The latest through-time measurement, if any
            (`{"first_to_last": ...}`).
        setting_names: How the remedies name settings (`model.config.name_settings`).

    Returns:
        The findings (empty for a healthy run, or too early to tell).
    """
    if len(rows) < MIN_STEPS:
        return []
    findings = [check_exploding(rows, layers, initial_weight_norms, config),
                check_vanishing(rows, layers, config, through_time)]
    return [dataclasses.replace(f, message=name_settings(f.message, setting_names)) for f in findings if f is not None]


def summarize(rows: Sequence[dict[str, float]], layers: Sequence[dict[str, Any]],
              initial_weight_norms: dict[str, float], findings: Iterable[Finding],
              diagnosis: Optional[str], through_time: Sequence[dict[str, float]] = (),
              warned: Iterable[Finding] = ()) -> dict[str, Any]:
    """The gradient-health section of summary.json.

    Returns:
        Steps kept; pre- and post-clipping global norms (median, 90th
        percentile, max); the share of kept steps that were clipped; per
        variable its median gradient norm and its weight norm at the start and
        the end; the through-time measurements per epoch; the findings at
        the end (and the verdict they make); every warning printed during
        training; and the divergence diagnosis, if any.
    """
    findings = list(findings)
    if not rows:
        return {"steps_kept": 0, "findings": [dataclasses.asdict(f) for f in findings],
                "verdict": ", ".join(f.kind for f in findings) or "not measured", "diverged": diagnosis}
    pre = np.array([row["grad_norm"] for row in rows])
    post = np.array([row["grad_norm_clipped"] for row in rows])

    def stats(values: np.ndarray) -> dict[str, float]:
        return {"median": float(np.median(values)), "p90": float(np.percentile(values, 90)),
                "max": float(values.max())}

    per_variable = {}
    for layer in layers:
        for label in layer["labels"]:
            per_variable[label] = {
                "median_grad_norm": float(np.median([row[f"grad/{label}"] for row in rows])),
                "weight_norm_start": initial_weight_norms.get(label),
                "weight_norm_end": rows[-1][f"weight/{label}"]}
    return {
        "steps_kept": len(rows),
        "grad_norm_pre_clip": stats(pre),
        "grad_norm_post_clip": stats(post),
        "clipped_share": float((post < pre * (1 - 1e-6)).mean()),
        "loss_improvement": loss_improvement(rows),
        "per_variable": per_variable,
        "through_time": list(through_time),
        "findings": [dataclasses.asdict(f) for f in findings],
        "verdict": ", ".join(f.kind for f in findings) or "healthy",
        "warned_during_training": [f.message for f in warned],
        "diverged": diagnosis,
    }
