"""``edgeseg explain``: Grad-CAM overlays of where a model looks for its predicted region, and
with ``--compare`` whether its compressed student looks at the same place (edgeseg.explain)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgeseg.cli.app import _setup_logging, command
from edgeseg.cli.options import VERBOSE


@command
def explain(
    model: Path = typer.Argument(..., help="HF checkpoint dir (a torch model: explaining needs gradients)."),
    images: Path = typer.Argument(..., help="An image file, or a folder of images (searched recursively)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder (overlays/, compare/, explain.json): new, or "
                             "an earlier explain output with --overwrite. No default."),
    stage: int = typer.Option(4, "--stage", help="Encoder stage whose activations are explained: 1 (1/4 of the "
                              "input size, fine) .. 4 (1/32, the most semantic). Default: 4."),
    method: str = typer.Option("gradcam", "--method", help="gradcam (channel weights = mean gradient) or hirescam "
                               "(gradient x activation at each position; fewer blank maps). Default: gradcam."),
    compare: Optional[Path] = typer.Option(None, "--compare", help="A compressed student checkpoint (e.g. edgeseg "
                                           "prune or distill output): teacher and student side by side, with the "
                                           "correlation of their maps. Default: none."),
    target_class: Optional[str] = typer.Option(None, "--target-class", help="Class name or index to explain. "
                                               "Default: the foreground (binary), else the non-background class "
                                               "predicted most in each image."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads. Default: torch's choice."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT when it is an earlier explain output."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    verbose: bool = VERBOSE,
):
    """Grad-CAM class-activation overlays for the predicted region (teacher, and student side by side).

    Each overlay shows the map as a heat map (red = most) with the predicted region outlined;
    explain.json holds per image how concentrated the map is inside the predicted region and,
    with --compare, the correlation of teacher and student maps.

    Example: edgeseg explain runs/teacher data/kvasir/images -o runs/explain --compare runs/distilled --stage 4
    """
    _setup_logging(verbose)
    if threads:
        import torch

        torch.set_num_threads(threads)
    from edgeseg.explain import explain_folder

    s = explain_folder(model, images, out, stage=stage, target=target_class, compare=compare, overwrite=overwrite,
                       progress=not quiet, method=method)
    m = s["means"]

    def f(v, fmt=".3f"):
        return "n/a" if v is None else format(v, fmt)

    typer.echo(f"{'image':<28} {'class':<12} {'area':>6} {'inside':>7} {'conc.':>6}"
               + (f" {'corr':>6} {'dice':>6}" if compare else ""))
    for r in s["rows"]:
        typer.echo(f"{r['name'][:28]:<28} {r['class'][:12]:<12} {f(r['area_share'])} {f(r['inside_share']):>7} "
                   f"{f(r['concentration'], '.2f'):>6}"
                   + (f" {f(r.get('correlation'), '.2f'):>6} {f(r.get('mask_dice')):>6}" if compare else ""))
    if s["blank_maps"]:
        typer.echo(f"{s['blank_maps']} of {s['images']} map(s) are blank (nothing argues for the class at stage "
                   f"{stage} with {s['method']}): try --method hirescam or an earlier --stage")
    typer.echo(f"mean concentration (CAM density inside the predicted region / over the image) "
               f"{f(m['concentration'], '.2f')}"
               + (f"; student {f(m['student_concentration'], '.2f')}; teacher-student CAM correlation "
                  f"{f(m['correlation'], '.2f')}, mask Dice {f(m['mask_dice'])}" if compare else ""))
    typer.echo(f"overlays: {out / 'overlays'}" + (f"  side by side: {out / 'compare'}" if compare else "")
               + f"  records: {out / 'explain.json'}")
