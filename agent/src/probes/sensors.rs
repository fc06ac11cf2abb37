//! Sensors: component temperatures (sysinfo) and batteries
//! (starship-battery). A desktop with no battery and a virtual machine with
//! no sensors report empty lists, which is not an error.

use starship_battery::units::ratio::percent;
use sysinfo::Components;
use vitals_proto::domain::{Battery, ProbeError, ProbeKind, Temperature};

use super::{Blocking, Probe, Reading, Section, probe_error};

const KIND: ProbeKind = ProbeKind::Sensors;

pub struct SensorsProbe {
    components: Option<Components>,
    blocking: Blocking,
}

impl SensorsProbe {
    pub fn new() -> Self {
        SensorsProbe {
            components: None,
            blocking: Blocking::default(),
        }
    }
}

impl Default for SensorsProbe {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait::async_trait]
impl Probe for SensorsProbe {
    fn kind(&self) -> ProbeKind {
        KIND
    }

    async fn run(&mut self) -> Reading {
        let components = self.components.take();
        let done = self
            .blocking
            .run(move || {
                let mut errors = Vec::new();
                let components = match components {
                    Some(mut c) => {
                        c.refresh(true);
                        Some(c)
                    }
                    None => Components::new_with_refreshed_list()
                        .map_err(|e| errors.push(probe_error(KIND, format!("temperatures: {e}"))))
                        .ok(),
                };
                let temperatures = components
                    .as_ref()
                    .map(|c| {
                        c.iter()
                            .filter_map(|c| {
                                temperature(c.label(), c.temperature(), c.max(), c.critical())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let batteries = batteries(&mut errors);
                (components, temperatures, batteries, errors)
            })
            .await;
        match done {
            Ok((components, temperatures, batteries, errors)) => {
                self.components = components;
                Reading {
                    section: Some(Section::Sensors {
                        temperatures,
                        batteries,
                    }),
                    errors,
                }
            }
            Err(e) => Reading {
                section: None,
                errors: vec![probe_error(KIND, e)],
            },
        }
    }
}

/// One sensor's reading; a sensor without a finite temperature is left
/// out, and a limit that is not finite is unknown.
fn temperature(
    label: &str,
    celsius: Option<f32>,
    max: Option<f32>,
    critical: Option<f32>,
) -> Option<Temperature> {
    let finite = |t: Option<f32>| t.filter(|t| t.is_finite());
    Some(Temperature {
        label: label.to_owned(),
        celsius: finite(celsius)?,
        max_celsius: finite(max),
        critical_celsius: finite(critical),
    })
}

fn batteries(errors: &mut Vec<ProbeError>) -> Vec<Battery> {
    let manager = match starship_battery::Manager::new() {
        Ok(m) => m,
        Err(e) => {
            errors.push(probe_error(KIND, format!("batteries: {e}")));
            return Vec::new();
        }
    };
    let list = match manager.batteries() {
        Ok(l) => l,
        Err(e) => {
            errors.push(probe_error(KIND, format!("batteries: {e}")));
            return Vec::new();
        }
    };
    list.enumerate()
        .filter_map(|(i, b)| match b {
            Ok(b) => Some(Battery {
                name: b
                    .model()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("battery {i}")),
                charge_percent: b.state_of_charge().get::<percent>(),
                health_percent: b.state_of_health().get::<percent>(),
                state: battery_state(b.state()).to_owned(),
                cycle_count: b.cycle_count(),
            }),
            Err(e) => {
                errors.push(probe_error(KIND, format!("battery {i}: {e}")));
                None
            }
        })
        .collect()
}

fn battery_state(s: starship_battery::State) -> &'static str {
    use starship_battery::State;
    match s {
        State::Charging => "charging",
        State::Discharging => "discharging",
        State::Full => "full",
        State::Empty => "empty",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_without_failing_on_this_machine() {
        let mut p = SensorsProbe::new();
        let r = p.run().await;
        let Some(Section::Sensors {
            temperatures,
            batteries,
        }) = r.section
        else {
            panic!("no section: {:?}", r.errors);
        };
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        // What the kernel exposes is the oracle: every temperature input
        // and every battery it lists is reported, and nothing else.
        let sensors = sys_count("/sys/class/hwmon", |p| {
            std::fs::read_dir(p).map_or(0, |d| {
                d.flatten()
                    .filter(|f| {
                        let n = f.file_name().to_string_lossy().into_owned();
                        n.starts_with("temp") && n.ends_with("_input")
                    })
                    .count()
            })
        });
        assert_eq!(sensors == 0, temperatures.is_empty(), "{temperatures:?}");
        for t in &temperatures {
            assert!(t.celsius > -60.0 && t.celsius < 200.0, "{t:?}");
        }
        let cells = sys_count("/sys/class/power_supply", |p| {
            usize::from(
                std::fs::read_to_string(p.join("type")).is_ok_and(|t| t.trim() == "Battery"),
            )
        });
        assert_eq!(batteries.len(), cells, "{batteries:?}");
        for b in &batteries {
            assert!((0.0..=100.5).contains(&b.charge_percent), "{b:?}");
        }
    }

    /// Sums `count` over the entries of a `/sys` class folder (0 if absent).
    fn sys_count(class: &str, count: impl Fn(&std::path::Path) -> usize) -> usize {
        std::fs::read_dir(class).map_or(0, |d| d.flatten().map(|e| count(&e.path())).sum())
    }

    #[test]
    fn readings_keep_only_finite_values() {
        let t = temperature("cpu", Some(45.5), Some(f32::INFINITY), Some(100.0)).unwrap();
        assert_eq!(
            (
                t.label.as_str(),
                t.celsius,
                t.max_celsius,
                t.critical_celsius
            ),
            ("cpu", 45.5, None, Some(100.0))
        );
        assert!(temperature("gone", Some(f32::NAN), None, None).is_none());
        assert!(temperature("none", None, Some(90.0), None).is_none());
    }

    #[test]
    fn battery_states_have_their_names() {
        use starship_battery::State;
        assert_eq!(battery_state(State::Charging), "charging");
        assert_eq!(battery_state(State::Discharging), "discharging");
        assert_eq!(battery_state(State::Full), "full");
        assert_eq!(battery_state(State::Unknown), "unknown");
    }
}
