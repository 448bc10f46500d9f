"""Views of attention: the terminal today (``viz.terminal``); PNG and HTML share its palette."""

from .terminal import PALETTE, format_matrix, format_table, heatmap, palette_hex

__all__ = ["PALETTE", "format_matrix", "format_table", "heatmap", "palette_hex"]
