"""``selfattention bench``: one head of attention against nn.GRU and nn.LSTM, timed honestly.

- ``cli``: the command's options and its handler (imports the rest when the command runs);
- ``run``: the measurement (candidates, alternating rounds, spreads, paired ratios), as a JSON-ready dict;
- ``table``: that dict as markdown tables that fit the terminal.
"""
