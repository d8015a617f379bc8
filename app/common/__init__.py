"""Small building blocks shared by the CAS Lab pages.

* :mod:`app.common.models`    — the model list, one-line model cards, cached checkpoint loading;
* :mod:`app.common.images`    — CIFAR-10 test images, uploaded/camera images, image conversions;
* :mod:`app.common.lab`       — attack + channel analysis of one image (no Streamlit; benchmarked);
* :mod:`app.common.figures`   — Plotly figure builders (probabilities, channel activations);
* :mod:`app.common.url_state` — page settings <-> URL query parameters, state kept across pages;
* :mod:`app.common.pickers`   — the controls: model, image and attack pickers, chart options, their URL
  parameters;
* :mod:`app.common.cache`     — results kept per session (chart options never re-run an attack);
* :mod:`app.common.panels`    — the result panels: verdict, images, probabilities, channel charts.

Everything that touches a model only reads it: models are shared by every session of the server.
"""
