"""Layers. They hold configuration and buffers only; the math lives in the ops."""

from __future__ import annotations

import threading
from typing import Literal

import torch
from torch import Tensor, nn
from torch.fx import Proxy

from .._checks import capturing_cuda_graph, check_bool, check_int, check_number
from .._onnx import capturing_for_export
from .._scripting import Scriptable, register_scriptable
from . import ops, schema, scripting

BufferMode = Literal["table", "none"]
_BUFFER_MODES = ("table", "none")

# Growing a table (rare) is serialized, so that threads sharing a module build it once; one lock for every module
# keeps modules picklable and copyable.
_GROW_LOCK = threading.Lock()


def _check_layer_args(layer: str, d_model, max_len, dropout, scale) -> None:
    check_int(d_model, "d_model", 1)
    # PyTorch's tutorial and ESPnet take dropout second: PositionalEncoding(512, 0.1) meant dropout=0.1.
    order = (f"; pe_ext's order is (d_model, max_len, dropout): pass dropout by keyword, e.g. "
             f"{layer}({d_model}, dropout={max_len})" if isinstance(max_len, float) else "")
    check_int(max_len, "max_len", 1, order)
    check_number(dropout, "dropout", finite=False)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"pe_ext: dropout must be in [0, 1), got {dropout}")
    check_number(scale, "scale", "; for a learnable factor on pe use ScaledPositionalEncoding (alpha), and multiply "
                 "x by a learnable factor yourself")


# The shapes real code saves its table in, which load_state_dict takes: the seed and ESPnet's legacy checkpoints,
# PyTorch's nn.Transformer tutorial, and plain rows. state_dict saves in the one the module last loaded, else in its
# batch_first convention's (as the classic modules of each convention shape `pe` to broadcast against x).
_CHECKPOINT_SHAPES = ("(1, max_len, d_model)", "(max_len, 1, d_model)", "(max_len, d_model)")


def _checkpoint_rows(table: Tensor, d_model: int) -> tuple[Tensor, str]:
    """The (max_len, d_model) rows of a checkpoint's table, and which of _CHECKPOINT_SHAPES it has."""
    if table.dim() == 3 and table.shape[0] == 1:
        rows, shape = table[0], _CHECKPOINT_SHAPES[0]
    elif table.dim() == 3 and table.shape[1] == 1:
        rows, shape = table[:, 0], _CHECKPOINT_SHAPES[1]
    elif table.dim() == 2:
        rows, shape = table, _CHECKPOINT_SHAPES[2]
    else:
        raise ValueError(f"pe_ext: a checkpoint's pe must have shape {', '.join(_CHECKPOINT_SHAPES)}; got "
                         f"{list(table.shape)}")
    if rows.shape[1] != d_model:
        raise ValueError(f"pe_ext: the checkpoint's pe has width {rows.shape[1]} (its last dimension), but this "
                         f"module's d_model is {d_model}")
    return rows, shape


def _in_checkpoint_shape(rows: Tensor, shape: str) -> Tensor:
    return {_CHECKPOINT_SHAPES[0]: rows.unsqueeze(0), _CHECKPOINT_SHAPES[1]: rows.unsqueeze(1)}.get(shape, rows)


class _GivenFrequencies(Scriptable, nn.Module):
    """A module that may hold frequencies given as a tensor (a model's own div_term or inv_freq) as its
    non-persistent buffer inv_freq: moved by .to(device) as the model's own is, but never converted to another dtype
    (.half() would round them, and with them every angle, which is float32 math even for half data)."""

    def _register_frequencies(self, encoding: dict, device) -> dict:
        """Registers frequencies given as a tensor; returns the other encoding keywords."""
        frequencies = encoding.get("frequencies")
        if not isinstance(frequencies, Tensor):
            return encoding
        self.register_buffer("inv_freq", frequencies if device is None else frequencies.to(device), persistent=False)
        return {k: v for k, v in encoding.items() if k != "frequencies"}

    def _with_frequencies(self, encoding: dict, device=None) -> dict:
        """encoding plus the module's inv_freq, if it has one (moved to `device` if given), as the ops' keyword."""
        inv_freq = self._buffers.get("inv_freq")
        if inv_freq is None:
            return encoding
        return {**encoding, "inv_freq": inv_freq if device is None else inv_freq.to(device)}

    def _graph_inv_freq(self) -> Tensor | None:
        return self.inv_freq if hasattr(self, "inv_freq") else None

    def _apply(self, fn, recurse=True):
        given = self._buffers.get("inv_freq")
        super()._apply(fn, recurse)
        converted = self._buffers.get("inv_freq")
        if given is not None and converted.dtype != given.dtype:
            self._buffers["inv_freq"] = given.to(converted.device)
        return self


class PositionalEncoding(_GivenFrequencies):
    """Drop-in for the classic "Attention Is All You Need" PositionalEncoding: forward(x) = x * scale + pe[:L].

    Args:
        d_model: width of x's last dimension.
        max_len: rows of the precomputed table (the longest offset + seq_len with a table).
        dropout: probability of dropout applied to the sum in training mode, fused into the same pass (0 keeps the
            classic module's behaviour).
        persistent: whether state_dict saves the table `pe` (register_buffer's word): True (default) so checkpoints
            load both ways with the classic module; False keeps it out of state_dict (still moved by .to()).
        buffer: "table" (default) keeps the table `pe`, shape (1, max_len, d_model), float32; "none" keeps no table:
            pe is computed on the fly, with no length limit.
        batch_first: x is (batch, seq_len, d_model) if True, (seq_len, batch, d_model) if False; a 2-D x is
            (seq_len, d_model) either way. state_dict saves `pe` as the classic module of that convention does:
            (1, max_len, d_model) (the seed, ESPnet) or (max_len, 1, d_model) (PyTorch's nn.Transformer tutorial).
        scale: factor on x (e.g. math.sqrt(d_model)).
        grow: with a table, a call that needs more than max_len positions (from its length and offset, or from the
            positions or start_positions it is given) grows the table (to twice as many rows, or as many as needed),
            keeping its rows, dtype and device, as ESPnet does; else it is an error. Threads may share a growing
            module. With positions or start_positions, growing reads their largest value (a device sync on CUDA),
            so torch.compile traces no such growth and a CUDA graph capture makes none (the op then refuses
            positions past the table; in a captured graph, with a device-side assert).
        base: the frequency base, 10000 in the paper.
        device: where the table is built.
        encoding: the other encoding keywords of pe_ext.ops (layout, frequencies, min_timescale, max_timescale,
            frequency_rounding, precise_angle); any other keyword is a TypeError. Frequencies given as a tensor
            become the buffer `inv_freq`.

    Every argument is checked here (type and range), not at the first forward.

    torch.jit.script and torch.fx.symbolic_trace see _graph_forward: one call of the op with the table as it is
    (no growth; the op refuses positions past it). torch.export and the ONNX exporters trace forward, a growing
    table included (see _extended_copy).

    load_state_dict takes a `pe` of any length, shaped (1, max_len, d_model), (max_len, 1, d_model) or
    (max_len, d_model), and keeps its values as loaded: the module then serves as many positions as it has, and
    extends it with computed rows up to its own max_len when it is shorter. The attribute checkpoint_shape (one of
    those three strings) is the shape state_dict saves `pe` in: batch_first's, or the last checkpoint's loaded.
    """

    pe: Tensor | None

    def __init__(self, d_model: int, max_len: int = 5000, dropout: float = 0.0, *, persistent: bool = True,
                 buffer: BufferMode = "table", batch_first: bool = True, scale: float = 1.0, grow: bool = False,
                 base: float = schema.DEFAULTS["base"], device: torch.device | str | None = None, **encoding) -> None:
        super().__init__()
        # Every argument now, even with buffer="none", rather than at the first forward.
        _check_layer_args(type(self).__name__, d_model, max_len, dropout, scale)
        if buffer not in _BUFFER_MODES:
            raise ValueError(f"pe_ext: buffer must be one of {_BUFFER_MODES}, got {buffer!r}")
        check_bool(persistent, "persistent")
        check_bool(batch_first, "batch_first")
        check_bool(grow, "grow")
        check_number(base, "base")
        self.d_model, self.max_len, self.buffer_mode, self.persistent = d_model, max_len, buffer, persistent
        self.batch_first, self.scale, self.grow = batch_first, scale, grow
        self.checkpoint_shape = _CHECKPOINT_SHAPES[0 if batch_first else 1]
        encoding = ops.checked_encoding(encoding, f"{type(self).__name__}()")
        self.encoding = {"base": base, **self._register_frequencies(encoding, device)}
        # What forward passes to the op: only non-default keywords, which each cost time to parse.
        self._op_encoding = {k: v for k, v in self.encoding.items() if schema.DEFAULTS.get(k) != v}
        self._graph_encoding = scripting.encoding_of(self.encoding)  # what TorchScript and torch.fx pass
        ops.sinusoidal_table(0, d_model, device=device, **self._with_frequencies(self._op_encoding, device))  # checks
        self.dropout = nn.Dropout(dropout)
        table = None if buffer == "none" else self._build_rows(0, max_len, device, torch.float32)
        self.register_buffer("pe", table, persistent=persistent)
        self.register_parameter("alpha", None)  # a learnable factor on pe in ScaledPositionalEncoding

    def _build_rows(self, first: int, count: int, device, dtype: torch.dtype) -> Tensor:
        """Rows first .. first + count - 1 of the table, shaped (1, count, d_model)."""
        return ops.sinusoidal_table(count, self.d_model, offset=first, dtype=dtype, device=device,
                                    **self._with_frequencies(self._op_encoding, device)).unsqueeze(0)

    @torch.no_grad()
    def reset_table(self) -> None:
        """Recompute the table in place, on its current device and dtype: for a module built on the meta device and
        materialized with to_empty(), whose non-persistent table no checkpoint restores."""
        if self.pe is not None:
            self.pe.copy_(self._build_rows(0, self.pe.shape[1], self.pe.device, self.pe.dtype))

    def forward(self, x: Tensor, offset: int = 0, positions: Tensor | None = None,
                start_positions: Tensor | None = None) -> Tensor:
        """x plus the encoding of positions offset, offset + 1, ... (offset serves incremental decoding), or of
        offset + positions (ids shaped like x without d_model), or of offset + start_positions[b] + l."""
        if isinstance(x, Proxy):  # torch.fx is tracing
            return self._graph_forward(x, offset, positions, start_positions)
        # Decoding calls are overhead-bound: the buffer and parameter are read once, from their dicts when there
        # (nn.Module's __getattr__ costs ~0.5 us), else as attributes, as torch.nn.utils.parametrize expects.
        # (.get(name, self.name) would pay the attribute lookup every call.) max_len is read before pe: growth
        # assigns pe before max_len, so a table read after max_len has at least max_len rows, even while another
        # thread grows it.
        max_len, buffers, parameters = self.max_len, self._buffers, self._parameters
        pe = buffers["pe"] if "pe" in buffers else self.pe  # noqa: SIM401
        alpha = parameters["alpha"] if "alpha" in parameters else self.alpha  # noqa: SIM401
        rank = x.dim()
        seq_dim = 1 if rank == 3 and self.batch_first else 0
        if rank in (2, 3):
            if x.shape[-1] != self.d_model:  # other ranks: the op names the problem
                raise ValueError(f"pe_ext: x's last dimension ({x.shape[-1]}) must equal d_model ({self.d_model})")
            if pe is not None and positions is None and start_positions is None:
                seq_len = x.shape[seq_dim]
                if offset + seq_len > max_len:
                    if not self.grow:
                        raise ValueError(
                            f"pe_ext: sequence of length {seq_len} at offset {offset} needs {offset + seq_len} "
                            f"positions, more than max_len={max_len}; build the module with a larger max_len, "
                            "grow=True or buffer='none'")
                    pe = self._grown_table(offset + seq_len)
            elif pe is not None and self.grow and not torch.compiler.is_compiling() and not capturing_cuda_graph(x):
                needed = self._positions_needed(x, offset, positions, start_positions)
                if needed > max_len:
                    pe = self._grown_table(needed)
        encoding = self._with_frequencies(self._op_encoding) if "inv_freq" in buffers else self._op_encoding
        # Dropout is fused into the add; self.dropout (an nn.Dropout, as in the tutorial module) holds p.
        dropout = self._modules["dropout"].p if self.training else 0.0
        if positions is None and start_positions is None and alpha is None and not dropout:
            return ops.add_pe_plain(x, pe, offset, self.scale, seq_dim, encoding)
        return ops.add_sinusoidal_pe(x, pe, offset=offset, scale=self.scale, batch_first=self.batch_first,
                                     alpha=1.0 if alpha is None else alpha, positions=positions,
                                     start_positions=start_positions, dropout=dropout, **encoding)

    def _graph_forward(self, x: Tensor, offset: int, positions: Tensor | None,
                       start_positions: Tensor | None) -> Tensor:
        """forward as TorchScript compiles it and torch.fx traces it: one call of the op with the layer's table as
        it is (no growth: the op refuses positions past it), no checks of x's shape beyond the op's."""
        seq_dim = -2 if self.batch_first else 0  # of a 3-D x, 1 if batch_first else 0; of a 2-D x, 0
        if start_positions is not None:
            if positions is not None:
                raise ValueError("pe_ext: give positions or start_positions, not both")
            positions = scripting.positions_from_starts(start_positions, x.size(seq_dim), self.batch_first)
        dropout = self.dropout.p if self.training else 0.0
        return scripting.add_pe(x, self.pe, offset, self.scale, seq_dim, self._graph_encoding, self._graph_inv_freq(),
                                positions, self.alpha, dropout)

    def _positions_needed(self, x: Tensor, offset: int, positions: Tensor | None,
                          start_positions: Tensor | None) -> int:
        """One past the largest position of a call with explicit positions (0 for an empty one)."""
        if positions is not None:
            return offset + int(positions.max()) + 1 if positions.numel() else 0
        seq_len = x.shape[1 if x.dim() == 3 and self.batch_first else 0]
        return offset + int(start_positions.max()) + seq_len if start_positions.numel() and seq_len else 0

    def _grown_table(self, needed: int) -> Tensor:
        """A table of at least `needed` rows (twice the current ones, or as many as needed). Threads growing one
        module at once build it once; a concurrent call reads the old table or the new one, never a table shorter
        than the max_len it read (_extend_table assigns pe before max_len)."""
        if capturing_for_export():
            return self._extended_copy(needed)
        with _GROW_LOCK:
            if self.pe.shape[1] < needed:  # else another thread grew it meanwhile
                self._extend_table(max(needed, 2 * self.pe.shape[1]))
            return self.pe

    def _extended_copy(self, needed) -> Tensor:
        """The table a graph captured for export uses past its rows: it writes no buffer, but extends a copy of the
        table, by the rows the call needs under torch.export (any count: a dynamic length), and under jit.trace,
        which records sizes as constants, as eager grows it (its graph then serves up to that many positions)."""
        pe, first = self.pe, self.pe.shape[1]
        if torch.jit.is_tracing():  # sizes are traced tensors: settle them
            first = int(first)
            needed = max(int(needed), 2 * first)
        return torch.cat([pe, self._build_rows(first, needed - first, pe.device, pe.dtype)], dim=1)

    def _extend_table(self, rows: int) -> None:
        """Appends computed rows up to `rows`; the rows the table has keep their values (a loaded table's too). The
        new table is assigned before max_len is raised."""
        pe = self.pe
        extra = self._build_rows(pe.shape[1], rows - pe.shape[1], pe.device, pe.dtype)
        self.pe = torch.cat([pe, extra], dim=1)  # still the registered buffer, same persistence
        self.max_len = rows

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if prefix + "pe" in destination:
            destination[prefix + "pe"] = _in_checkpoint_shape(destination[prefix + "pe"][0], self.checkpoint_shape)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        loaded, own_len = state_dict.get(prefix + "pe"), self.max_len
        resized = self.pe is not None and self.persistent and isinstance(loaded, Tensor)
        if resized:
            rows, self.checkpoint_shape = _checkpoint_rows(loaded, self.d_model)
            state_dict[prefix + "pe"] = rows.unsqueeze(0)  # the (1, max_len, d_model) buffer's shape
            self.pe = torch.empty((1, *rows.shape), dtype=self.pe.dtype, device=self.pe.device)
            self.max_len = rows.shape[0]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if resized and self.max_len < own_len:
            with torch.no_grad():
                self._extend_table(own_len)

    def extra_repr(self) -> str:
        encoding = ", ".join(f"{k}={v!r}" for k, v in self.encoding.items())
        frequencies = f", frequencies=inv_freq{tuple(self.inv_freq.shape)}" if "inv_freq" in self._buffers else ""
        return (f"d_model={self.d_model}, max_len={self.max_len}, buffer={self.buffer_mode!r}, "
                f"persistent={self.persistent}, batch_first={self.batch_first}, scale={self.scale}, grow={self.grow}, "
                f"{encoding}{frequencies}")


def _drop_saved_table(state_dict, prefix, *args) -> None:
    """ESPnet's load hook: checkpoints of ESPnet up to v0.5.2 saved the table; a module that keeps it out of
    state_dict ignores it."""
    state_dict.pop(prefix + "pe", None)


class ScaledPositionalEncoding(PositionalEncoding):
    """ESPnet's ScaledPositionalEncoding (espnet/nets/pytorch_backend/transformer/embedding.py): x + alpha * pe,
    with alpha a learnable scalar (initial value `alpha`, ESPnet's 1.0) and x not scaled (ESPnet's plain
    PositionalEncoding is the one that multiplies x by sqrt(d_model): PositionalEncoding(scale=math.sqrt(d_model))),
    dropout after the sum; the table grows on demand and stays out of state_dict, which holds alpha alone, as
    ESPnet's. Other arguments as PositionalEncoding's."""

    def __init__(self, d_model: int, max_len: int = 5000, dropout: float = 0.0, *, alpha: float = 1.0,
                 grow: bool = True, persistent: bool = False, **kwargs) -> None:
        check_number(alpha, "alpha")
        super().__init__(d_model, max_len, dropout, grow=grow, persistent=persistent, **kwargs)
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.initial_alpha = float(alpha)
        if not persistent:
            self._register_load_state_dict_pre_hook(_drop_saved_table)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.alpha.fill_(self.initial_alpha)


class SinusoidalPositionalEmbedding(_GivenFrequencies):
    """fairseq's SinusoidalPositionalEmbedding: forward(tokens) returns (batch, seq_len, embedding_dim) embeddings
    of make_positions(tokens, padding_idx) (padding tokens: a zero embedding), with fairseq's timescale frequencies
    and concatenated layout. Computed by one kernel, with no table and no length limit."""

    def __init__(self, embedding_dim: int, padding_idx: int, init_size: int = 1024, **encoding) -> None:
        super().__init__()
        check_int(embedding_dim, "embedding_dim", 1)
        check_int(padding_idx, "padding_idx", 0)
        check_int(init_size, "init_size", 0)  # fairseq's initial table size: accepted, but no table is kept
        self.embedding_dim, self.padding_idx = embedding_dim, padding_idx
        encoding = self._register_frequencies(ops.checked_encoding(encoding, "SinusoidalPositionalEmbedding()"), None)
        defaults = {"layout": "concatenated"} if "inv_freq" in self._buffers else {"frequencies": "timescales",
                                                                                  "layout": "concatenated"}
        self.encoding = {**defaults, **encoding}
        self._graph_encoding = scripting.encoding_of(self.encoding)  # what TorchScript and torch.fx pass
        # Follows .to(device) and .half() as fairseq's buffer of the same name does; it holds no data.
        self.register_buffer("_float_tensor", torch.empty(0), persistent=False)

    def forward(self, tokens: Tensor, positions: Tensor | None = None) -> Tensor:
        if isinstance(tokens, Proxy):  # torch.fx is tracing
            return self._graph_forward(tokens, positions)
        if positions is None:
            positions = ops.make_positions(tokens, self.padding_idx)
        return ops.sinusoidal_embedding(positions.to(self._float_tensor.device), self.embedding_dim,
                                        padding_idx=self.padding_idx, dtype=self._float_tensor.dtype,
                                        **self._with_frequencies(self.encoding))

    def _graph_forward(self, tokens: Tensor, positions: Tensor | None) -> Tensor:
        """forward as TorchScript compiles it and torch.fx traces it."""
        if positions is None:
            positions = ops.make_positions(tokens, self.padding_idx)
        return scripting.embedding(positions.to(self._float_tensor.device), self.embedding_dim, self.padding_idx,
                                   self._float_tensor.dtype, self._graph_encoding, self._graph_inv_freq())


# The classes torch.jit.script compiles in place of the layers (pe_ext/_scripting.py): _graph_forward when compiled,
# the eager forward otherwise.


class _ScriptablePositionalEncoding(PositionalEncoding):
    __annotations__ = {"_graph_encoding": scripting.Encoding}

    def forward(self, x: Tensor, offset: int = 0, positions: Tensor | None = None,
                start_positions: Tensor | None = None) -> Tensor:
        if torch.jit.is_scripting():
            return self._graph_forward(x, offset, positions, start_positions)
        return self._eager_forward(x, offset, positions, start_positions)

    @torch.jit.unused
    def _eager_forward(self, x: Tensor, offset: int, positions: Tensor | None,
                       start_positions: Tensor | None) -> Tensor:
        return PositionalEncoding.forward(self, x, offset, positions=positions, start_positions=start_positions)


class _ScriptableScaledPositionalEncoding(ScaledPositionalEncoding, _ScriptablePositionalEncoding):
    __annotations__ = _ScriptablePositionalEncoding.__annotations__


class _ScriptableSinusoidalPositionalEmbedding(SinusoidalPositionalEmbedding):
    __annotations__ = {"_graph_encoding": scripting.Encoding}

    def forward(self, tokens: Tensor, positions: Tensor | None = None) -> Tensor:
        if torch.jit.is_scripting():
            return self._graph_forward(tokens, positions)
        return self._eager_forward(tokens, positions)

    @torch.jit.unused
    def _eager_forward(self, tokens: Tensor, positions: Tensor | None) -> Tensor:
        return SinusoidalPositionalEmbedding.forward(self, tokens, positions)


register_scriptable(PositionalEncoding, _ScriptablePositionalEncoding)
register_scriptable(ScaledPositionalEncoding, _ScriptableScaledPositionalEncoding)
register_scriptable(SinusoidalPositionalEmbedding, _ScriptableSinusoidalPositionalEmbedding)
