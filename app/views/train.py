"""Train: configure a training run, start it in the background, and watch its curves.

Runs are background jobs (see :mod:`app.jobs`): they keep going when the page is reloaded or closed,
and every run folder under the runs folder is listed here with its status. A run's best checkpoint
appears in every model picker of the app as soon as its first epoch is saved.
"""
from __future__ import annotations

import streamlit as st
import torch

from app import jobs
from app.common import figures, models
from app.common.pages import prefix
from cas import data as cas_data
from cas.attacks import AUTO_STEP, auto_step_size
from cas.checkpoint import CheckpointError, pretrained_index, read_model_card, runs_dir
from cas.family import DEFENSES
from cas.models import PAPER_ARCHS
from cas.train import TrainConfig

P = prefix("train")
GPU = torch.cuda.is_available()

# Preselected settings. Without a GPU: a small run that finishes in a few minutes on a CPU; with one:
# the full recipe (all 50,000 training images, PGD-10, 40 epochs).
SMALL = dict(method="at", cas=True, defense="cas", arch="resnet18", width=8, epochs=3, train_subset=3000, batch_size=128,
             lr=0.1, epsilon=8.0, steps=3, val_size=200, eval_steps=3, description="")
FULL = dict(method="at", cas=True, defense="cas", arch="resnet18", width=32, epochs=40, train_subset=0, batch_size=512,
            lr=0.2, epsilon=8.0, steps=10, val_size=1000, eval_steps=10, description="")
PRESET = FULL if GPU else SMALL

METHODS = {"at": "Adversarial training (PGD-AT)", "trades": "TRADES", "mart": "MART",
           "std": "Standard training (no attacks)"}
ARCH_NAMES = {"resnet18": "ResNet-18", "vgg16": "VGG-16", "wrn34_10": "WideResNet-34-10 (large: GPU only)"}
ARCHS = {a: ARCH_NAMES.get(a, a) for a in PAPER_ARCHS}  # the architectures the paper used, from the library
STATUS_ICONS = {"running": ":material/progress_activity:", "finished": ":material/check_circle:",
                "stopped": ":material/pause_circle:", "failed": ":material/error:", "unknown": ":material/help:"}
STATUS_TEXT = {
    "running": "Running.",
    "finished": "Finished: every planned epoch is done.",
    "stopped": "Stopped. Its last finished epoch is kept; Resume continues from there.",
    "failed": "Failed: the training process ended without finishing. Its last output is below.",
    "unknown": "Not started from this page (for example trained on the command line), and its log does not "
               "say that it finished or stopped.",
}


# -- settings ------------------------------------------------------------------------------------------

def free_name() -> str:
    """A suggested run name that no run folder uses yet."""
    i = 1
    while jobs.run_dir(f"run-{i}").exists():
        i += 1
    return f"run-{i}"


def settings() -> dict:
    """The settings as the widgets hold them now."""
    return {k: st.session_state[P + k] for k in PRESET}


def config_of(s: dict) -> TrainConfig:
    """The run's settings for the widgets' values ``s`` (the one form the jobs and the trainer take)."""
    defense = s["defense"] if s["cas"] and s["arch"] == "resnet18" else "cas"
    return TrainConfig(method=s["method"], cas=s["cas"], defense=defense, arch=s["arch"], width=int(s["width"]),
                       epochs=int(s["epochs"]), batch_size=int(s["batch_size"]), lr=float(s["lr"]),
                       epsilon=float(s["epsilon"]), steps=int(s["steps"]), train_subset=int(s["train_subset"]),
                       val_size=int(s["val_size"]), eval_steps=int(s["eval_steps"]),
                       description=s["description"].strip())


def data_problem() -> str | None:
    """Why the trainer would not find CIFAR-10, or None."""
    try:
        cas_data.find_source()
    except cas_data.DataNotFoundError as e:
        return str(e)
    return None


def bundled_names() -> set[str]:
    try:
        return {str(e.get("name")) for e in pretrained_index()}
    except CheckpointError:
        return set()


def problems(name: str, s: dict) -> list[str]:
    """Everything that stops a new run with this name and these settings (empty: it can start)."""
    out = []
    problem, _ = jobs.start_problem(name)
    if problem:
        out.append(problem)
    if name in bundled_names():
        out.append(f"A bundled model is already called '{name}': choose another name, so that model pickers "
                   "can tell the two apart.")
    settings_problem = jobs.settings_problem(config_of(s))
    if settings_problem:
        out.append(settings_problem)
    missing = data_problem()
    if missing:
        out.append(missing)
    return out


def _flash(kind: str, text: str) -> None:
    st.session_state[P + "flash"] = (kind, text)


def start_clicked() -> None:
    """Start a new run from the current settings (checked again here: they may have changed)."""
    name = st.session_state[P + "name"].strip()
    s = settings()
    found = problems(name, s)
    if found:
        _flash("error", " ".join(found))
        return
    try:
        jobs.start(name, config_of(s))
    except ValueError as e:  # too many runs at once, or settings refused
        _flash("error", str(e))
        return
    st.session_state[P + "view"] = name
    st.session_state[P + "name"] = free_name()
    _flash("success", f"Started run '{name}'. It runs in the background: you can leave or reload this page.")


def resume_clicked(name: str) -> None:
    """Start run ``name`` again from its last finished epoch."""
    if jobs.status(name) == "running":
        _flash("error", f"Run '{name}' is already running.")
        return
    try:
        jobs.resume(name)
    except ValueError as e:
        _flash("error", str(e))
        return
    st.session_state[P + "view"] = name
    _flash("success", f"Resumed run '{name}' from its last finished epoch.")


# -- one run -------------------------------------------------------------------------------------------

def progress(info: jobs.RunInfo) -> None:
    """Progress bar (epochs done / planned) and, while running, an estimate of the time left."""
    total = info.total_epochs or max(info.done, 1)
    text = f"{info.done} of {total} epochs done"
    if info.status == "running" and info.records:
        per_epoch = sum(r.get("seconds", 0) for r in info.records) / info.done
        left = max(total - info.done, 0) * per_epoch
        text += f" · about {per_epoch:.0f} s per epoch, {left / 60:.0f} min left" if left >= 60 else \
            f" · about {per_epoch:.0f} s per epoch, {left:.0f} s left"
    elif info.status == "running":
        text += " · loading the data and training the first epoch"
    st.progress(min(info.done / total, 1.0), text=text)


def card_summary(info: jobs.RunInfo) -> None:
    """The best checkpoint's card: held-out accuracies, best epoch and the exact command."""
    try:
        card = read_model_card(info.best_checkpoint)
    except CheckpointError as e:  # being rewritten at this very moment, or damaged
        st.warning(f"The best checkpoint could not be read just now: {e}")
        return
    st.markdown("##### :material/workspace_premium: Best checkpoint")
    held = card.heldout or {}
    c1, c2, c3 = st.columns(3)
    c1.metric("Best epoch", f"{card.best_epoch if card.best_epoch is not None else '?'} of "
                            f"{card.epochs if card.epochs is not None else '?'}")
    if "heldout_clean" in held:
        c2.metric("Held-out clean accuracy", f"{held['heldout_clean']:.1f}%")
    if "heldout_robust" in held:
        c3.metric("Held-out accuracy under attack", f"{held['heldout_robust']:.1f}%",
                  help=f"Attack: {held.get('robust_attack', '?')} at ε = "
                       f"{card.epsilon if card.epsilon is not None else '?'}/255.")
    st.caption(models.card_line(card, card.description or ""))
    st.success(f"This model now appears in every model picker of the app (Attack Lab, Compare, ...) as "
               f"**{info.name}**. Its file: `{info.best_checkpoint}`", icon=":material/check_circle:")
    st.markdown("The exact command that trains it again:")
    st.code(card.command or "?", language="bash", wrap_lines=True)


def run_panel(name: str) -> None:
    """Everything about one run: status, buttons, progress, curves, checkpoint and output."""
    info = jobs.run_info(name)
    st.markdown(f"#### {STATUS_ICONS[info.status]} {name}: {info.status}")
    st.caption(STATUS_TEXT[info.status]
               + (f" Started {info.job['started_text']}." if info.job and info.job.get("started_text") else ""))
    stopping = info.status == "running" and (info.path / jobs.STOP_FILE).exists()
    c1, c2, _ = st.columns([1, 1, 4])
    if info.status == "running":
        if c1.button("Stop", key="btn_train_stop", icon=":material/stop_circle:", disabled=stopping,
                     help="Stops after the current batch and keeps the last finished epoch."):
            jobs.stop(name)
            stopping = True
    if info.can_resume:
        c2.button("Resume", key="btn_train_resume", icon=":material/play_circle:", on_click=resume_clicked,
                  args=(name,), help="Continues from the last finished epoch with the same settings.")
    if stopping:
        st.info("Stopping after the current batch…", icon=":material/hourglass_top:")
    progress(info)
    if info.status == "failed":
        st.error("The training process ended without finishing. Its last output:", icon=":material/error:")
        st.code(jobs.output_tail(name) or "(it printed nothing)", language=None)
    if info.records:
        st.plotly_chart(figures.training_curves_figure(info.records), key=f"train_curves_{name}", config={"displayModeBar": False})
        last = info.records[-1]
        st.caption(f"Last epoch ({last['epoch']}): loss {last.get('loss', '?')}, train accuracy "
                   f"{last.get('train_acc', '?')}%, held-out clean {last.get('heldout_clean', '?')}%, "
                   f"held-out under attack {last.get('heldout_robust', '?')}% "
                   f"({last.get('robust_attack', 'no attack')}), {last.get('images_per_s', '?')} images/s.")
    if info.best_checkpoint:
        card_summary(info)
    with st.expander("Trainer output and command", icon=":material/terminal:"):
        if info.job:
            st.code(" ".join(info.job.get("command", [])), language="bash", wrap_lines=True)
        st.code(jobs.output_tail(name, 40) or "(no output yet)", language=None)


def runs_section(running_before: tuple[str, ...]) -> None:
    """The list of runs and the chosen run's panel. While a run is running this part refreshes every two
    seconds; when the set of running runs changes, the whole page is drawn again."""
    runs = jobs.list_runs()
    running_now = tuple(r.name for r in runs if r.status == "running")
    if running_now != running_before:
        st.rerun()
    flash = st.session_state.pop(P + "flash", None)
    if flash:
        (st.success if flash[0] == "success" else st.error)(flash[1])
    if not runs:
        st.info(f"No runs yet. Runs are kept in `{runs_dir()}`.", icon=":material/folder_open:")
        return
    rows = []
    for r in runs:
        last = r.records[-1] if r.records else {}
        rows.append({"run": r.name, "status": r.status, "epochs": f"{r.done} / {r.total_epochs or '?'}",
                     "held-out clean %": last.get("heldout_clean"),
                     "held-out under attack %": last.get("heldout_robust"),
                     "best epoch": last.get("best_epoch"),
                     "started": (r.job or {}).get("started_text", "")})
    st.dataframe(rows, hide_index=True, width="stretch")
    names = [r.name for r in runs]
    if st.session_state.get(P + "view") not in names:
        st.session_state[P + "view"] = names[0]
    view = st.selectbox("Show run", names, key=P + "view")
    run_panel(view)


# -- the page ------------------------------------------------------------------------------------------

def explainer() -> None:
    """What adversarial training does, and what the curves' numbers mean."""
    with st.expander("What adversarial training does, and what the numbers mean", icon=":material/help:"):
        st.markdown(
            "**Adversarial training** shows the network attacked images while it learns: for every batch, an "
            "attack (PGD) first looks for a small change, at most ε/255 per pixel, that fools the network as it "
            "is now, and the network then learns to classify the changed images correctly. **CAS** adds small "
            "modules that learn to turn down the channels such changes excite.\n\n"
            "- **Loss**: the training loss; it should fall.\n"
            "- **Train accuracy**: on the attacked training images. For CAS models it uses the mask of the "
            "*true* label, which the model does not know at test time, so it reads higher than any test "
            "accuracy.\n"
            "- **Held-out clean**: accuracy on validation images kept out of the training set (never "
            "test images), which the network never trains on.\n"
            "- **Held-out under attack**: the same images after a PGD attack (soft-mask PGD for CAS models, an "
            "honest attack against their masks). The epoch where this is highest is kept as the best "
            "checkpoint.")


def preset_note() -> None:
    """Which preset is preselected, and why."""
    if GPU:
        st.info("A GPU is available, so the full recipe is preselected: ResNet-18 at width 32, all 50,000 "
                "training images, PGD-10, 40 epochs, batch 512, learning rate 0.2.", icon=":material/memory:")
    else:
        st.info(f"No GPU here, so a small run is preselected that finishes in a few minutes on this CPU: "
                f"ResNet-18 at width {SMALL['width']}, {SMALL['train_subset']:,} training images, {SMALL['epochs']} "
                f"epochs, {SMALL['steps']} PGD steps. Its accuracies stay low (it sees few images, briefly); it "
                "shows how training works. The bundled models were trained on a CPU like this one with "
                "`python scripts/build_zoo.py` (fast adversarial training, about 15 minutes per model).",
                icon=":material/memory:")


def settings_widgets() -> None:
    """The new run's settings, in three columns (their values live in session state)."""
    c1, c2, c3 = st.columns(3)
    with c1:
        st.text_input("Run name", key=P + "name", max_chars=jobs.NAME_MAX,
                      help="Letters, digits, '-' and '_'. It names the run's folder and the model in the pickers.")
        st.selectbox("Training method", list(METHODS), format_func=METHODS.get, key=P + "method")
        st.toggle("Mask modules (CAS or a relative)", key=P + "cas")
        st.selectbox("Which channel defence", list(DEFENSES), key=P + "defense",
                     format_func=lambda d: f"{DEFENSES[d].label}: {DEFENSES[d].description}",
                     disabled=not st.session_state[P + "cas"] or st.session_state[P + "arch"] != "resnet18",
                     help="CAS on both blocks of the last stage, as in the paper; its relatives where their papers "
                          "put them (ResNet-18 only).")
        st.text_input("Description (optional)", key=P + "description", max_chars=200,
                      help="Shown next to the model in the pickers.")
    with c2:
        st.selectbox("Architecture", list(ARCHS), format_func=ARCHS.get, key=P + "arch")
        st.number_input("Width (channels of the first stage)", 2, 128, step=2, key=P + "width",
                        disabled=st.session_state[P + "arch"] == "wrn34_10",
                        help="64 is the paper's ResNet-18; smaller is faster. WideResNet-34-10 has a fixed width.")
        st.number_input("Epochs", 1, 200, key=P + "epochs")
        st.number_input("Training images (0 = all 50,000)", 0, 50_000, step=500, key=P + "train_subset")
        st.number_input("Batch size", 8, 2048, step=32, key=P + "batch_size")
    with c3:
        st.number_input("Learning rate (peak)", 0.001, 2.0, step=0.01, format="%.3f", key=P + "lr")
        st.number_input("Attack budget ε (/255)", 0.0, 32.0, step=0.5, key=P + "epsilon",
                        help="Each pixel may change by at most this much (8/255 in the paper).")
        st.number_input("PGD steps per training batch", 1, 20, key=P + "steps")
        st.number_input("Validation images (held out of the training set) checked each epoch", 0, 10_000,
                        step=100, key=P + "val_size")
        st.number_input("PGD steps of that check", 1, 50, key=P + "eval_steps")


def settings_notes(s: dict) -> None:
    """The step size the attack will use, and warnings for settings that make little sense or take hours."""
    step = auto_step_size(float(s["epsilon"]), int(s["steps"]))
    st.caption(f"PGD step size: {step:.3g}/255 ({AUTO_STEP}). "
               + ("Standard training uses no attack; ε and the steps only matter for the held-out check."
                  if s["method"] == "std" else ""))
    images = int(s["train_subset"]) or 50_000
    if int(s["batch_size"]) > images:
        st.warning(f"The batch size ({s['batch_size']}) is larger than the number of training images ({images}): "
                   "each epoch is one batch of all of them.")
    if not GPU and (s["arch"] == "wrn34_10" or images > 10_000 or int(s["width"]) > 32):
        st.warning("Without a GPU these settings take a long time (hours). The preselected small run takes minutes.")


def start_buttons(name: str, s: dict) -> None:
    """What stops a new run, Start, and Resume for a stopped run of the same name."""
    found = problems(name, s)
    for message in found:
        st.error(message)
    _, existing = jobs.start_problem(name)
    b1, b2, _ = st.columns([1, 1, 3])
    b1.button("Start training", key="btn_train_start", type="primary", icon=":material/play_arrow:",
              on_click=start_clicked, disabled=bool(found))
    if existing is not None and existing.can_resume:
        b2.button(f"Resume '{name}'", key="btn_train_resume_existing", icon=":material/play_circle:",
                  on_click=resume_clicked, args=(name,))


def page() -> None:
    """The Train page: new runs as background jobs, and the runs' progress."""
    st.title(":material/model_training: Train")
    st.caption("Train your own CIFAR-10 model, with or without CAS, and watch it learn. Training runs in the "
               "background: you can leave or reload this page, and the finished model appears in every model "
               "picker of the app.")
    explainer()
    for key, value in PRESET.items():
        st.session_state.setdefault(P + key, value)
    st.session_state.setdefault(P + "name", free_name())
    st.subheader("New run")
    preset_note()
    settings_widgets()
    s = settings()
    settings_notes(s)
    start_buttons(st.session_state[P + "name"].strip(), s)
    st.subheader("Runs")
    running = tuple(r.name for r in jobs.list_runs() if r.status == "running")
    st.fragment(run_every=2 if running else None)(runs_section)(running)


if __name__ == "__main__":  # run as a script (streamlit run / AppTest.from_file)
    page()
