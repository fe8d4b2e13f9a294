"""Packed rows: the history positions a model computes, and when they are only the real ones.

Shapes: B batch, L history length, N packed rows, M next-click pairs.
"""

from __future__ import annotations

import torch

PACKED_ROWS, PACKED_PAIRS = "packed_rows", "packed_pairs"


def steps_every_position(mask: torch.Tensor) -> bool:
    """Whether a layer should compute every position of ``mask`` (B, L), padding masked,
    rather than find the real ones itself: on an accelerator (finding them needs their count
    on the host, a synchronisation) and under ``torch.compile`` (a count found inside the graph
    breaks it). On the CPU, eager, only the real positions are worth computing."""
    return mask.device.type != "cpu" or torch.compiler.is_compiling()


class Packing:
    """The history positions a model computes, one row each: packed tensors are (N, ...).

    On the CPU the rows are the real items of ``mask`` (B, L), N = mask.sum(), in ``mask``
    order (sample-major, then position): padding, often most of a batch, costs nothing, and
    arithmetic is the cost there. On an accelerator (``dense``) the rows are all B * L
    positions: finding the real ones needs their count on the host, a synchronisation that
    costs more there than the padding's arithmetic; padding rows are computed and masked.
    Under ``torch.compile`` the rows are dense too: a row count found inside the graph would
    break it. A batch that brings its rows (``packed_positions``, ``Packing.of``: the
    trainer's, on every device) is packed everywhere, without either cost. The layers run one
    code on the rows of either kind: ``unpack`` gives zeros at padding and ``sum_per_sample``
    sums real rows only.
    """

    def __init__(
        self, mask: torch.Tensor, dense: bool | None = None,
        rows: torch.Tensor | None = None, pairs: torch.Tensor | None = None,
    ) -> None:
        self.mask = mask
        self.batch, self.length = mask.shape
        if dense is None:
            dense = rows is None and steps_every_position(mask)
        self.dense = dense
        flat = mask.reshape(-1)
        if self.dense:
            self.rows = torch.arange(flat.numel(), device=mask.device)
        else:
            self.rows = flat.nonzero().squeeze(-1) if rows is None else rows
        self.pairs = None if self.dense else pairs
        self.sample = self.rows // self.length  # (N,)
        self.position = self.rows % self.length  # (N,)
        self.real = flat if self.dense else None  # (N,) bool, where padding rows exist

    @classmethod
    def of(cls, batch: dict[str, torch.Tensor]) -> Packing:
        """The packing of a batch's history, from its ``packed_positions`` where it has them."""
        return cls(batch["mask"], rows=batch.get(PACKED_ROWS), pairs=batch.get(PACKED_PAIRS))

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, ...) -> (N, ...)."""
        flat = x.flatten(0, 1)
        return flat if self.dense else flat.index_select(0, self.rows)

    def pack_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(H, B, L, ...) -> (H, N, ...)."""
        flat = x.flatten(1, 2)
        return flat if self.dense else flat.index_select(1, self.rows)

    def zero_padding(self, x: torch.Tensor) -> torch.Tensor:
        """(..., N, D) with padding rows set to zero (a no-op without padding rows)."""
        if self.real is None:
            return x
        return x * self.real[:, None].to(x.dtype)

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(N, ...) -> (B, L, ...), zeros at padding."""
        shape = (self.batch, self.length, *x.shape[1:])
        if self.dense:
            return self.zero_padding(x.flatten(1)).view(shape)
        return x.new_zeros(self.batch * self.length, *x.shape[1:]).index_copy(
            0, self.rows, x
        ).view(shape)

    def unpack_heads(self, x: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """(H, N) -> (H, B, L), ``fill`` at padding."""
        if self.dense:
            return x.view(-1, self.batch, self.length).masked_fill(~self.mask, fill)
        full = x.new_full((x.shape[0], self.batch * self.length), fill)
        return full.index_copy(1, self.rows, x).view(-1, self.batch, self.length)

    def sum_per_sample(self, x: torch.Tensor) -> torch.Tensor:
        """(..., N, D) -> (..., B, D): the sum over each sample's real rows."""
        rows = x.dim() - 2
        if self.dense:
            return self.zero_padding(x).unflatten(rows, (self.batch, self.length)).sum(rows + 1)
        shape = (*x.shape[:rows], self.batch, x.shape[-1])
        return x.new_zeros(shape).index_add(rows, self.sample, x)

    def next_pairs(self) -> torch.Tensor:
        """Rows r whose next row r + 1 is the same sample's next real item, (M,).

        Left-aligned histories make positions t and t + 1 of one sample consecutive rows.
        """
        if self.pairs is not None:
            return self.pairs
        following = (self.position + 1).clamp(max=self.length - 1)
        has_next = (self.position + 1 < self.length) & self.mask[self.sample, following]
        return has_next.nonzero().squeeze(-1)


def packed_positions(mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The real rows of ``mask`` (B, L) and their next-click pairs, as batch entries.

    Found outside the model (the trainer's batches carry them for models with ``packs_rows``,
    from the host's copy of the lengths), they reach ``Packing.of`` as inputs: no device
    synchronisation finds them, and their count is an input's size, not a value found inside
    the graph, so ``torch.compile`` traces the packed rows without a graph break.
    """
    packing = Packing(mask, dense=False)
    return {PACKED_ROWS: packing.rows, PACKED_PAIRS: packing.next_pairs()}
