"""Strict conversion between reference state dicts and our params (pure numpy).

Import (:func:`import_params`): every reference tensor is converted, recognised as a tied second
name of another, or matched by the format's explicit ignore list; every target parameter is
filled. Anything else (a key nothing takes, a parameter nothing fills, a shape or tie mismatch)
is collected and raised together in one :class:`ConversionError`.

Export (:func:`export_params`) writes the reference names back; import(export(p)) == p.

Both accept the looped and the scanned (``model.scan_layers``) param layouts.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from xfm_jax.convert import formats, rules, tree


class ConversionError(ValueError):
    """Raised with every problem of a conversion listed, one per line."""

    def __init__(self, what: str, problems: Sequence[str]):
        self.what, self.problems = what, list(problems)
        shown = list(problems[:40])
        if len(problems) > len(shown):
            shown.append(f'... and {len(problems) - len(shown)} more')
        super().__init__(f'{what}: {len(problems)} problem(s)\n  ' + '\n  '.join(shown))


@dataclasses.dataclass
class Report:
    """What an import did with each reference key."""
    format: str
    converted: list[tuple[tuple[str, ...], tuple[str, ...]]] = dataclasses.field(
        default_factory=list)
    tied: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (key, same tensor as)
    ignored: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (key, reason)
    resized: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = dataclasses.field(
        default_factory=list)
    filled: list[str] = dataclasses.field(default_factory=list)  # our paths taken from `fallback`

    def summary(self, verbose: bool = False) -> str:
        num_params = sum(len(t) for _, t in self.converted)
        lines = [f'format {self.format}: {len(self.converted)} reference tensors -> {num_params} '
                 f'parameters; {len(self.tied)} tied duplicates checked; '
                 f'{len(self.ignored)} ignored.']
        if verbose:
            lines += [f'  {", ".join(s)} -> {", ".join(t)}' for s, t in self.converted]
            lines += [f'  tied: {key} == {same}' for key, same in self.tied]
        by_reason = collections.defaultdict(list)
        for key, reason in self.ignored:
            by_reason[reason].append(key)
        for reason, keys in by_reason.items():
            lines.append(f'  ignored ({reason}): {len(keys)} keys, e.g. {", ".join(keys[:3])}')
        lines += [f'  resized {key}: {a} -> {b}' for key, a, b in self.resized]
        if self.filled:
            lines.append(f'  kept from the fallback (allow_missing): {", ".join(self.filled)}')
        return '\n'.join(lines)


def _looped_spec(target: Any) -> tuple[dict[str, jax.ShapeDtypeStruct], bool]:
    flat = {path: jax.ShapeDtypeStruct(tuple(leaf.shape), leaf.dtype)
            for path, leaf in tree.flatten(target).items()}
    return tree.unstack_layers(flat), tree.is_scanned(flat)


def _normalise_keys(state_dict: Mapping[str, Any], fmt: str) -> dict[str, np.ndarray]:
    """Numpy values; TF-era LayerNorm names (gamma/beta, as in the original bert-base files) and
    transformers>=5 in-memory BEiT names brought to the names the formats list."""
    if fmt == 'hf_beit':
        renamed = formats.hub_beit_names(state_dict)
    else:
        renamed = {key: re.sub(r'LayerNorm\.gamma$', 'LayerNorm.weight',
                               re.sub(r'LayerNorm\.beta$', 'LayerNorm.bias', key))
                   for key in state_dict}
    if len(set(renamed.values())) != len(renamed):
        raise ConversionError(f'reading a {fmt} state dict',
                              ['it holds the same tensor under two naming conventions'])
    return {renamed[key]: np.asarray(value) for key, value in state_dict.items()}


def import_params(state_dict: Mapping[str, Any], target: Any, fmt: str | None = None, *,
                  hf_config: dict | None = None, allow_missing: Sequence[str] = (),
                  fallback: Any = None) -> tuple[dict, Report]:
    """Reference state dict -> our params, shaped and typed like ``target``.

    Args:
      state_dict: {reference key: array} (numpy, or anything ``np.asarray`` takes).
      target: our params (arrays or ``jax.ShapeDtypeStruct`` s, flax-boxed or not), e.g. the
        ``params`` of ``jax.eval_shape(model.init, ...)``; looped or scanned layers.
      fmt: one of ``formats.FORMATS``; detected from the keys when None.
      hf_config: an HF config.json dict, used only to detect BERT vs RoBERTa.
      allow_missing: regexes of our param paths that may lack a reference tensor (e.g. the MLM
        heads for a fine-tuned checkpoint); they are taken from ``fallback`` (same structure as
        ``target``) and listed in the report.
    Returns:
      (params as a nested dict of numpy arrays in ``target``'s layout, Report).
    Raises:
      ConversionError listing every unused key, unfilled parameter and shape or tie mismatch.
    """
    fmt = fmt or formats.detect_format(state_dict.keys(), hf_config)
    state_dict = _normalise_keys(state_dict, fmt)
    spec, scanned = _looped_spec(target)
    key_map = formats.key_map(fmt, spec.keys(), state_dict.keys())
    report, out, used, problems = Report(fmt), {}, set(), []
    missing_source = {}  # our path -> the reference key it needs but the state dict lacks

    for rule in key_map.rules:
        if rule.sources[0] not in state_dict:
            missing_source.update({t: rule.sources[0] for t in rule.targets})
            continue
        source = state_dict[rule.sources[0]]
        shapes = [spec[t].shape for t in rule.targets]
        used.update(rule.sources)  # a mismatch is reported once, not again as an unused key
        try:
            rules.check_source_shape(rule, source, shapes)
        except ValueError as e:
            problems.append(str(e))
            continue
        for path, value in zip(rule.targets, rules.to_ours(rule, source, shapes)):
            out[path] = value.astype(spec[path].dtype)
        if rule.kind == 'relpos' and source.shape != shapes[0]:
            report.resized.append((rule.sources[0], source.shape, shapes[0]))
        report.converted.append((rule.sources, rule.targets))

    for tie in key_map.tied:
        if tie.key not in state_dict:
            continue  # a tied second name is optional
        if tie.same_as not in state_dict:
            problems.append(f'{tie.key} is tied to {tie.same_as}, which is missing')
        elif (state_dict[tie.key].shape != state_dict[tie.same_as].shape
              or not np.array_equal(state_dict[tie.key], state_dict[tie.same_as])):
            problems.append(f'{tie.key} {state_dict[tie.key].shape} should be tied to (equal) '
                            f'{tie.same_as} {state_dict[tie.same_as].shape} but differs')
        else:
            used.add(tie.key)
            report.tied.append((tie.key, tie.same_as))

    for key in sorted(set(state_dict) - used):
        reason = key_map.ignore_reason(key)
        if reason is None:
            problems.append(f'unexpected reference key {key} {state_dict[key].shape}: no parameter '
                            f'of the target takes it (format {fmt})')
        else:
            report.ignored.append((key, reason))

    fallback_flat = tree.unstack_layers(tree.flatten(fallback)) if fallback is not None else {}
    covered = {t for rule in key_map.rules for t in rule.targets}
    needed = collections.defaultdict(list)  # missing reference key -> our paths waiting for it
    for path in sorted(set(spec) - set(out)):
        if any(re.search(p, path) for p in allow_missing) and path in fallback_flat:
            out[path] = np.asarray(fallback_flat[path]).astype(spec[path].dtype)
            report.filled.append(path)
        elif path in missing_source:
            needed[missing_source[path]].append(path)
        elif path not in covered:  # (a covered path missing here had a shape mismatch, reported)
            problems.append(f'our parameter {path} {spec[path].shape} has no reference tensor in '
                            f'format {fmt}')
    problems += [f'missing reference key {key} for our {", ".join(paths)}'
                 for key, paths in needed.items()]

    if problems:
        raise ConversionError(f'importing a {fmt} checkpoint', problems)
    if scanned:
        out = tree.stack_layers(out)
    return tree.unflatten(out), report


def export_params(params: Any, fmt: str) -> dict[str, np.ndarray]:
    """Our params (looped or scanned) -> {reference key: numpy array} in ``fmt`` naming.

    Tied second names (MLM decoders) are written as copies, as in a PyTorch state dict.
    Parameters holding NaN or Inf are refused: a diverged run must not become a checkpoint.
    """
    flat = {path: np.asarray(v) for path, v in tree.unstack_layers(tree.flatten(params)).items()}
    bad = {path: int(np.size(v) - np.isfinite(v.astype(np.float32)).sum())  # bfloat16 too
           for path, v in flat.items() if v.dtype.kind not in 'biu'}
    non_finite = [f'{path} ({count} of {np.size(flat[path])} values)'
                  for path, count in sorted(bad.items()) if count]
    if non_finite:
        raise ValueError(f'{len(non_finite)} parameter(s) hold NaN or Inf, refusing to export: '
                         + ', '.join(non_finite[:10]) + (' ...' if len(non_finite) > 10 else ''))
    key_map = formats.key_map(fmt, flat.keys())
    out, covered = {}, set()
    for rule in key_map.rules:
        # np.array, not ascontiguousarray: that one turns a scalar (temp) into shape (1,).
        out[rule.sources[0]] = np.array(rules.to_reference(rule, [flat[t] for t in rule.targets]),
                                        order='C')
        covered.update(rule.targets)
    for tie in key_map.tied:
        if tie.same_as in out:
            out[tie.key] = out[tie.same_as].copy()
    uncovered = sorted(set(flat) - covered)
    if uncovered:
        raise ConversionError(f'exporting to {fmt}', [
            f'our parameter {p} {flat[p].shape} has no {fmt} name' for p in uncovered])
    return out
