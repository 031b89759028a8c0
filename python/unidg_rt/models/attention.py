"""Group-bias attention: one semantics, several forms, one registry (DESIGN §4).

``attention(q, k, v, token_groups, group_bias) = softmax(q kᵀ/√d + T[g_q, g_k]) v``

Layout everywhere here is SDPA's: ``q, k, v: [B, H, N, D]``; ``token_groups: [B, N]`` or
``[N]`` (int); ``group_bias: [G, G]`` or ``[H, G, G]`` (float). Torch forms (registered here):

- ``reference``: explicit N×N additive mask through SDPA — the oracle (tests, CPU).
- ``fold``: bias folding — append ``T[g_q]`` columns to Q and one-hot group columns to K,
  so any standard fused MHA computes ``q kᵀ + T[g_q, g_k]`` with no mask input. Exact for
  finite ``T``; ``-inf`` is clamped to ``FOLD_NEG`` (exp underflows to exactly 0 in fp32).
- ``triton``: the fused flash-style kernel in :mod:`unidg_rt.kernels` (no N×N).
- ``sdpa``: plain SDPA; the form for a model called without a group bias (a bias raises).

A call without a bias (``token_groups`` or ``group_bias`` is ``None``) is plain SDPA in every
form. The graph forms of :data:`unidg_rt.vocab.GRAPH_FORMS` (``decomposed``, ``attention_op``,
``plugin``) are registered by :mod:`unidg_rt.export.forms` into the same registry; ``fold`` is in
both lists and is one entry, defined here: the exported ``fold`` graph *is* the torch fold traced.

Choosing a form, like diffusers' ``attention_dispatch`` (a name → function table, never a
swapped module global):

- per model: ``FluxTransformer.set_attention_form(name)`` (a torch form) stores the name on
  every ``FluxAttention``;
- per call site: ``with attention_form(name): ...`` overrides the per-model name for the
  ``FluxAttention`` calls made inside it (any registered form — the exporter uses it for the
  graph forms). The selection lives in a :class:`contextvars.ContextVar`, so it is per thread
  (and per asyncio task): other threads keep their models' forms.

``torch.compile`` cannot trace a ``ContextVar``: compiled code reads the per-model name while no
:func:`attention_form` block is open in the process (a guarded counter) and falls back to the
slow (graph-broken) lookup while one is, so results stay right either way.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import threading
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from unidg_rt.errors import ConfigError, InvalidInputError
from unidg_rt.vocab import GRAPH_FORMS, TORCH_FORMS

#: logit value that stands for -inf in the folded form; exp(-1e4) == 0 in fp32/bf16/fp16.
FOLD_NEG = -1.0e4
ATTENTION_FORMS = TORCH_FORMS  # the one list: unidg_rt.vocab
#: every name a form may be registered under: the torch forms, then the graph-only ones
FORM_NAMES: tuple[str, ...] = TORCH_FORMS + tuple(f for f in GRAPH_FORMS if f not in TORCH_FORMS)

#: ``fn(q, k, v, token_groups, group_bias) -> out``, all ``[B, H, N, D]``; called with a bias only
AttentionFn = Callable[..., torch.Tensor]


def _groups_2d(token_groups: torch.Tensor, batch: int) -> torch.Tensor:
    g = token_groups.long()
    if g.ndim == 1:
        g = g[None].expand(batch, -1)  # [N] -> [B, N]
    return g


def _table_3d(group_bias: torch.Tensor, heads: int) -> torch.Tensor:
    t = group_bias
    if t.ndim == 2:
        t = t[None]  # [G, G] -> [1, G, G]
    if t.shape[0] not in (1, heads):
        raise ValueError(f"group_bias has {t.shape[0]} heads, expected 1 or {heads}")
    return t


def group_bias_mask(
    token_groups: torch.Tensor, group_bias: torch.Tensor, batch: int, heads: int
) -> torch.Tensor:
    """Materialise ``B[b, h, i, j] = T[h, g[b, i], g[b, j]]`` — ``[B, H|1, N, N]``. Oracle only."""
    g = _groups_2d(token_groups, batch)  # [B, N]
    t = _table_3d(group_bias, heads)  # [H|1, G, G]
    rows = t[:, g]  # [H|1, B, N, G]
    idx = g[None, :, None, :].expand(rows.shape[0], -1, g.shape[1], -1)  # [H|1, B, N, N]
    mask = torch.gather(rows, 3, idx)  # [H|1, B, N, N]
    return mask.permute(1, 0, 2, 3)  # [B, H|1, N, N]


def reference_attention(q, k, v, token_groups=None, group_bias=None) -> torch.Tensor:
    """The oracle: explicit additive N×N bias through SDPA."""
    if group_bias is None or token_groups is None:
        return F.scaled_dot_product_attention(q, k, v)
    mask = group_bias_mask(token_groups, group_bias.to(q.dtype), q.shape[0], q.shape[1])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def fold_group_bias(q, k, v, token_groups, group_bias):
    """Return ``(q', k', v', scale)`` such that ``SDPA(q', k', v', scale=scale)[..., :D]`` is the
    biased attention. Head dim is padded to a multiple of 8 (fused kernels want that)."""
    b, h, _, d = q.shape
    g = _groups_2d(token_groups, b)  # [B, N]
    t = _table_3d(group_bias, h).to(torch.promote_types(q.dtype, torch.float32))
    t = torch.nan_to_num(t, neginf=FOLD_NEG).clamp_min(FOLD_NEG)
    num_groups = t.shape[-1]
    pad = (-(d + num_groups)) % 8
    # split the √d factor across both sides so fp16 never overflows (|1e4·d^¼| < 65504 for d ≤ 256)
    root = d**0.25
    q_ext = t[:, g].permute(1, 0, 2, 3) * root  # [B, H|1, N, G]
    q_ext = q_ext.expand(b, h, -1, -1).to(q.dtype)
    k_ext = F.one_hot(g, num_groups).to(k.dtype)[:, None] * root  # [B, 1, N, G]
    k_ext = k_ext.expand(b, k.shape[1], -1, -1)
    zq = q.new_zeros(b, h, q.shape[2], pad)
    zk = k.new_zeros(b, k.shape[1], k.shape[2], pad)
    q2 = torch.cat([q, q_ext, zq], dim=-1)  # [B, H, N, D+G+pad]
    k2 = torch.cat([k, k_ext, zk], dim=-1)  # [B, H, N, D+G+pad]
    v2 = F.pad(v, (0, num_groups + pad))  # [B, H, N, D+G+pad]
    return q2, k2, v2, 1.0 / math.sqrt(d)


def folded_attention(q, k, v, token_groups, group_bias) -> torch.Tensor:
    """Bias folding through plain SDPA (FlashAttention-eligible: no mask input)."""
    d = q.shape[-1]
    q2, k2, v2, scale = fold_group_bias(q, k, v, token_groups, group_bias)
    out = F.scaled_dot_product_attention(q2, k2, v2, scale=scale)  # [B, H, N, D']
    return out[..., :d]


def sdpa_attention(q, k, v, token_groups=None, group_bias=None) -> torch.Tensor:
    """Plain SDPA: the form that takes no group bias (it raises rather than drop one)."""
    if group_bias is not None:
        raise InvalidInputError("form='sdpa' ignores group_bias; use 'reference', 'fold' or 'triton'")
    return F.scaled_dot_product_attention(q, k, v)


def triton_attention(q, k, v, token_groups, group_bias) -> torch.Tensor:
    """The fused Triton kernel; triton is imported on first use (it is optional)."""
    from unidg_rt.kernels.group_attention import triton_group_attention

    return triton_group_attention(q, k, v, token_groups, group_bias)


# ---------------------------------------------------------------------- the registry
_FORMS: dict[str, AttentionFn] = {}
_SELECTED: contextvars.ContextVar[str | None] = contextvars.ContextVar("attention_form", default=None)
#: attention_form() blocks open in any thread: while 0, compiled code never reads the ContextVar
_open_blocks = 0
_open_lock = threading.Lock()


def register_form(name: str, fn: AttentionFn | None = None, *, replace: bool = False):
    """Register ``fn`` as attention form ``name``; as ``@register_form(name)`` a decorator.

    ``name`` must be one of the vocabulary's forms (:data:`FORM_NAMES`, from
    :mod:`unidg_rt.vocab`): a new form is added there first. Registering a name twice raises
    unless ``replace=True``. ``fn(q, k, v, token_groups, group_bias)`` is only called with a bias.
    """
    if name not in FORM_NAMES:
        raise ConfigError(
            f"register_form(name={name!r}): not an attention form of unidg_rt.vocab; use one of "
            f"{FORM_NAMES} or add the name to vocab.TORCH_FORMS / GRAPH_FORMS first"
        )

    def add(f: AttentionFn) -> AttentionFn:
        if name in _FORMS and _FORMS[name] is not f and not replace:
            raise ConfigError(
                f"register_form(name={name!r}): already registered as {_FORMS[name].__qualname__}; "
                "pass replace=True to override it"
            )
        _FORMS[name] = f
        return f

    return add if fn is None else add(fn)


def get_form(name: str) -> AttentionFn:
    """The function registered as ``name``; :class:`ConfigError` naming the choices otherwise."""
    fn = _FORMS.get(name)
    if fn is not None:
        return fn
    if name in GRAPH_FORMS:
        raise ConfigError(
            f"form={name!r} is a graph form registered by unidg_rt.export.forms: import that module "
            f"first, or pick a torch form {TORCH_FORMS}"
        )
    raise ConfigError(f"form={name!r}: unknown attention form; choose one of {registered_forms()}")


def registered_forms() -> tuple[str, ...]:
    """The names registered so far, in vocabulary order (graph forms once export is imported)."""
    return tuple(n for n in FORM_NAMES if n in _FORMS)


@contextlib.contextmanager
def attention_form(name: str) -> Iterator[None]:
    """Run every ``FluxAttention`` called inside the block through form ``name`` (any registered
    form), whatever its per-model form. Per thread / asyncio task; nests; restores on exit."""
    global _open_blocks
    get_form(name)  # fail on entry, not at the first attention call
    token = _SELECTED.set(name)
    with _open_lock:
        _open_blocks += 1
    try:
        yield
    finally:
        with _open_lock:
            _open_blocks -= 1
        _SELECTED.reset(token)


def selected_form(default: str) -> str:
    """The form an attention call resolves to: the innermost :func:`attention_form` of this
    thread/task, else ``default`` (the module's per-model form)."""
    if _open_blocks == 0:  # a plain global: torch.compile guards on it and never sees the ContextVar
        return default
    return _SELECTED.get() or default


def attention(q, k, v, token_groups=None, group_bias=None, form: str = "reference") -> torch.Tensor:
    """Run form ``form`` (looked up in the registry). All forms agree with ``reference`` (tested)."""
    fn = get_form(form)
    if fn is not sdpa_attention and (token_groups is None or group_bias is None):
        return F.scaled_dot_product_attention(q, k, v)  # no bias: plain SDPA in every form
    return fn(q, k, v, token_groups, group_bias)


register_form("reference", reference_attention)
register_form("fold", folded_attention)  # also the graph form "fold": the exporter traces this
register_form("triton", triton_attention)
register_form("sdpa", sdpa_attention)
