//! holdfast-sim: the seeded simulated cluster that drives holdfast's pipeline under madsim.

pub mod checker;
pub mod history;
pub mod params;
pub mod scenario;
