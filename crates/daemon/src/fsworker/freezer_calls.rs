//! The worker's calls into the freezer, turned into its answers: the plan from the mount
//! table, the preflight (whose plan FREEZE reuses while the table is unchanged), the freeze
//! (with the flush left out when the flush ahead just found everything clean) and what a
//! thaw report means for the host.

use std::sync::Arc;

use hv_vss_core::{FsError, FsResult};
use hv_vss_freezer::{
    FlushAhead, FlushPolicy, FreezeReport, FrozenSet, MountTableWatch, Plan, ThawReport,
};

use super::{FOUND_CLEAN_WITHIN, FsSetup};

fn plan(setup: &FsSetup) -> Result<(Plan, MountTableWatch), FsError> {
    hv_vss_freezer::make_plan_watched(&setup.source, &setup.selection, &setup.config)
        .map_err(|e| FsError::new(format!("plan: {e}")))
}

/// The preflight; its plan, for the freeze to reuse while the mount table stays unchanged.
pub(super) fn check(setup: &FsSetup) -> Result<(Plan, MountTableWatch), FsError> {
    let (plan, watch) = plan(setup)?;
    hv_vss_freezer::preflight(&plan, &setup.options).map_err(|e| FsError::new(e.to_string()))?;
    Ok((plan, watch))
}

/// A failed freeze: the error, its report, and what its rollback could not thaw.
pub(super) struct FreezeFailed {
    pub(super) error: FsError,
    pub(super) report: Option<Box<FreezeReport>>,
    pub(super) unthawed: Option<Box<FrozenSet>>,
}

pub(super) fn freeze(
    setup: &FsSetup,
    prepared: Option<(Plan, MountTableWatch)>,
    flusher: &FlushAhead,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<FrozenSet, FreezeFailed> {
    let early = |error| FreezeFailed {
        error,
        report: None,
        unthawed: None,
    };
    if cancelled() {
        return Err(early(FsError::new(
            "freeze cancelled: a thaw was asked for",
        )));
    }
    let reusable = prepared.and_then(|(plan, mut watch)| watch.unchanged().then_some(plan));
    let (plan, plan_reused) = match reusable {
        Some(plan) => (plan, true),
        None => (plan(setup).map_err(early)?.0, false),
    };
    // The fast path: the flush ahead has just found every filesystem clean (its last pass
    // wrote nothing to the block device, or, without I/O counters, cost no more than twice
    // a clean pass), so a flush now would only add its own cost to the answer; FIFREEZE
    // writes back the little left itself.
    let mut options = setup.options.clone();
    if flusher.found_clean(&plan, FOUND_CLEAN_WITHIN) {
        options.flush = FlushPolicy::Skip;
    }
    let mut frozen = match &setup.watch {
        Some(watch) => {
            hv_vss_freezer::freeze_watched(&plan, &options, cancelled, Arc::clone(watch))
        }
        None => hv_vss_freezer::freeze_cancellable(&plan, &options, cancelled),
    };
    match &mut frozen {
        Ok(set) => set.report_mut().plan_reused = plan_reused,
        Err(f) => f.report.plan_reused = plan_reused,
    }
    frozen.map_err(|f| {
        let pending = f
            .unthawed
            .as_ref()
            .map(|rest| rest.freezes_pending())
            .unwrap_or_default();
        let detail = if !pending.is_empty() {
            format!(
                "{} (FIFREEZE still running on {}: journal and lock kept until it returns and is thawed)",
                f.error,
                pending
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else if f.unthawed.is_some() {
            format!("{} (rollback incomplete: retrying its thaw)", f.error)
        } else {
            f.error.to_string()
        };
        FreezeFailed {
            error: FsError::new(detail),
            report: Some(f.report),
            unthawed: f.unthawed,
        }
    })
}

pub(super) fn thaw_result(report: &ThawReport) -> FsResult {
    if report.complete {
        return Ok(());
    }
    let failed: Vec<String> = report
        .filesystems
        .iter()
        .filter_map(|f| match &f.outcome {
            hv_vss_freezer::FsThawOutcome::Failed { error } => {
                Some(format!("{}: {error}", f.mount_point.display()))
            }
            _ => None,
        })
        .collect();
    Err(FsError::new(format!(
        "thaw incomplete, retrying: {}",
        failed.join("; ")
    )))
}
