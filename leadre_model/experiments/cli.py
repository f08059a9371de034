"""`leadre experiment …`: reproducible studies that write a report under reports/<run>/."""

from __future__ import annotations

from pathlib import Path

import typer

from leadre_model.clikit import console, friendly

experiment_app = typer.Typer(help="Reproduce the paper's studies on a synthetic world.",
                             no_args_is_help=True)


@experiment_app.command("ablations")
@friendly
def ablations(
    run: str = typer.Option("ablations", help="report directory name under --reports"),
    reports: Path = typer.Option(Path("reports"), help="where runs are written"),
    studies: str = typer.Option("table1,table2,table6,fig4a,fig4b,fig5",
                                help="comma-separated subset"),
    users: int = typer.Option(1000, min=50, help="synthetic users"),
    ads: int = typer.Option(1000, min=50, help="synthetic ads"),
    epochs: float | None = typer.Option(None, min=0.1, help="SFT epochs per stage (default: preset)"),
    max_test_users: int | None = typer.Option(None, min=1, help="seeded subsample of test users"),
    pretrain_epochs: float = typer.Option(
        6.0, min=0.0, help="epochs of the shared base model's 'lm' stage (0: every variant "
        "starts from scratch)"),
    seed: int = typer.Option(0),
    progress: bool = typer.Option(True),
) -> None:
    """Tables 1, 2, 6 and Figs. 4a, 4b, 5 of the paper on one synthetic world: trains every
    variant, evaluates it beside the baselines, writes report.md + PNGs (resumable)."""
    from leadre_model.data.synth import SynthConfig
    from leadre_model.experiments.ablations import AblationConfig, run_ablations

    base = AblationConfig()
    train = base.train
    if epochs is not None:
        train = train.model_copy(update={"sft": train.sft.model_copy(update={"epochs": epochs})})
    cfg = AblationConfig(
        world=SynthConfig(n_users=users, n_ads=ads, n_content=max(ads, 1500), seed=seed),
        train=train,
        eval=base.eval.model_copy(update={"max_test_users": max_test_users, "seed": seed}),
        studies=tuple(s.strip() for s in studies.split(",") if s.strip()),
        pretrain=(base.pretrain.model_copy(update={"epochs": pretrain_epochs})
                  if base.pretrain is not None and pretrain_epochs > 0 else None),
        progress=progress,
    )
    out = reports / run
    results = run_ablations(cfg, out, log=lambda m: console.rule(f"[bold]{m}"))
    console.print((out / "report.md").read_text().split("## All models")[0])
    console.print(f"report → {out / 'report.md'}  ({sum(results['timings'].values()):.0f} s)")


@experiment_app.command("recipe")
@friendly
def recipe(
    run: str = typer.Option("recipe", help="report directory name under --reports"),
    reports: Path = typer.Option(Path("reports"), help="where runs are written"),
    variants: str = typer.Option("reference,wo_content,wo_summary,wo_profile,no_soft,"
                                 "ex_then_seq,default_init,no_content_loss,dpo", help="comma-separated subset"),
    users: int = typer.Option(1000, min=50, help="synthetic users"),
    ads: int = typer.Option(1000, min=50, help="synthetic ads"),
    seed: int = typer.Option(0),
    progress: bool = typer.Option(True, help="progress bars (plain lines in a log)"),
) -> None:
    """The CPU recipe's ablations (Table 1, Table 2, Fig. 4a/4b analogues, codebook init),
    each beside baselines trained to convergence → report.md + recipe_ablations.png."""
    from leadre_model.data.synth import SynthConfig
    from leadre_model.experiments.recipe import run_recipe

    out = reports / run
    run_recipe(out, SynthConfig(n_users=users, n_ads=ads, n_content=max(ads, 1500), seed=seed),
               [v.strip() for v in variants.split(",") if v.strip()],
               log=lambda m: console.rule(f"[bold]{m}"), progress=progress)
    console.print((out / "report.md").read_text(), highlight=False)
