//! hv-vss application integrations (work in progress: see the bins as they land).
