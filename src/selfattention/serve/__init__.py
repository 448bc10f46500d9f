"""``selfattention serve``: the explorer as a local web app. Type a sentence, see its attention.

- ``sentences``: what a sentence becomes — the model's trace, ``explain``'s selection and the
  explorer's data (``viz.html.payload``), the same steps as ``explain --html``; the text's limits.
- ``app``: the Starlette app — its routes, the request's checks (size, time, JSON's shape), the
  bounded queue in front of the one thread that runs the model.
- ``server``: uvicorn — the socket, the connection limits, a deadline on slow request headers.
- ``cli``: the command's options and handler.
"""
