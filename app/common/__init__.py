"""Small building blocks shared by the CAS Lab pages.

* :mod:`app.common.pages`        — the page list (files, titles, addresses, session-state prefixes);
* :mod:`app.common.compute`      — compute what a page shows: the one door to the heavy work (one image's
  attack, channel statistics, evaluations, ε-curves), plain hashable requests in, plain results out,
  kept per session;
* :mod:`app.common.image_attack` — one image's attack and its channels: AttackChoice, LabResult,
  PointView, channel summaries and tables (no Streamlit; benchmarked);
* :mod:`app.common.models`       — the model list, one-line model cards, cached checkpoint loading;
* :mod:`app.common.images`       — CIFAR-10 test images, uploaded/camera images, image conversions;
* :mod:`app.common.figures`      — every Plotly figure of the pages (no Streamlit);
* :mod:`app.common.url_state`    — page settings <-> URL query parameters, state kept across pages;
* :mod:`app.common.pickers`      — the controls: model, image and attack pickers, chart options, their URL
  parameters, the session-state key convention;
* :mod:`app.common.attack_text`  — the attack settings' labels, help texts and number-field steps;
* :mod:`app.common.panels`       — the result panels (verdict, images, probabilities, channel charts) and
  the progress bar;
* :mod:`app.common.presentation` — presentation mode (large fonts and images for a projector).

Everything that touches a model only reads it: models are shared by every session of the server.
"""
