//! Result lines: one per comparison (the machine line is `odi_benches::machine_line`).

use std::fmt;

use crate::data::{GIB, KIB, MIB};

/// Which way a figure improves.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub(crate) enum Better {
    /// Throughputs: ratio = odi / reference.
    Higher,
    /// Times: ratio = reference / odi.
    Lower,
}

/// Every run of both sides of one comparison.
#[derive(Clone, Debug)]
pub(crate) struct Comparison {
    pub(crate) name: String,
    pub(crate) unit: &'static str,
    pub(crate) tool: String,
    pub(crate) better: Better,
    /// The ratio to reach; `None` for a line printed for context.
    pub(crate) target: Option<f64>,
    pub(crate) decimals: usize,
    pub(crate) odi: Vec<f64>,
    pub(crate) reference: Vec<f64>,
}

impl Comparison {
    /// A comparison with no runs yet; `decimals` is how the values are printed.
    pub(crate) fn new(name: String, unit: &'static str, tool: impl Into<String>, better: Better, target: impl Into<Option<f64>>, decimals: usize) -> Self {
        Self { name, unit, tool: tool.into(), better, target: target.into(), decimals, odi: Vec::new(), reference: Vec::new() }
    }

    /// The best run: the highest throughput or the shortest time.
    fn best(&self, runs: &[f64]) -> f64 {
        let pick = match self.better {
            Better::Higher => f64::max,
            Better::Lower => f64::min,
        };
        runs.iter().copied().reduce(pick).unwrap_or(f64::NAN)
    }

    pub(crate) fn ratio(&self) -> f64 {
        let (odi, reference) = (self.best(&self.odi), self.best(&self.reference));
        match self.better {
            Better::Higher => odi / reference,
            Better::Lower => reference / odi,
        }
    }

    /// Every run, for the progress log.
    pub(crate) fn runs(&self) -> String {
        let show = |runs: &[f64]| runs.iter().map(|v| format!("{v:.*}", self.decimals)).collect::<Vec<_>>().join(", ");
        format!("{}: odi [{}], {} [{}] {}", self.name, show(&self.odi), self.tool, show(&self.reference), self.unit)
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.decimals;
        write!(
            f,
            "{}: odi {:.d$} {unit}, reference {} {:.d$} {unit}, ratio {:.2} ",
            self.name,
            self.best(&self.odi),
            self.tool,
            self.best(&self.reference),
            self.ratio(),
            unit = self.unit,
        )?;
        match self.target {
            Some(target) => write!(f, "(target >= {target:.1})"),
            None => f.write_str("(no target)"),
        }
    }
}

/// `1 GiB`, `250 MiB`, `64 KiB`, `1012.5 MiB`: binary units, a decimal only when needed.
pub(crate) fn size(bytes: u64) -> String {
    for (unit, name) in [(GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
        if bytes >= unit {
            return if bytes.is_multiple_of(unit) { format!("{} {name}", bytes / unit) } else { format!("{:.1} {name}", bytes as f64 / unit as f64) };
        }
    }
    format!("{bytes} B")
}
