//! Sensors: component temperatures (sysinfo) and batteries
//! (starship-battery). A desktop with no battery and a virtual machine with
//! no sensors report empty lists, which is not an error.

use starship_battery::units::ratio::percent;
use sysinfo::Components;
use vitals_proto::domain::{Battery, ProbeError, Temperature};

use super::{Blocking, Probe, Reading, Section, probe_error};

const NAME: &str = "sensors";

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
    fn name(&self) -> &'static str {
        NAME
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
                        .map_err(|e| errors.push(probe_error(NAME, format!("temperatures: {e}"))))
                        .ok(),
                };
                let temperatures = components
                    .as_ref()
                    .map(|c| {
                        c.iter()
                            .filter_map(|c| {
                                Some(Temperature {
                                    label: c.label().to_owned(),
                                    celsius: c.temperature().filter(|t| t.is_finite())?,
                                    max_celsius: c.max().filter(|t| t.is_finite()),
                                    critical_celsius: c.critical().filter(|t| t.is_finite()),
                                })
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
                errors: vec![probe_error(NAME, e)],
            },
        }
    }
}

fn batteries(errors: &mut Vec<ProbeError>) -> Vec<Battery> {
    let manager = match starship_battery::Manager::new() {
        Ok(m) => m,
        Err(e) => {
            errors.push(probe_error(NAME, format!("batteries: {e}")));
            return Vec::new();
        }
    };
    let list = match manager.batteries() {
        Ok(l) => l,
        Err(e) => {
            errors.push(probe_error(NAME, format!("batteries: {e}")));
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
                errors.push(probe_error(NAME, format!("battery {i}: {e}")));
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
        for t in &temperatures {
            assert!(t.celsius > -60.0 && t.celsius < 200.0, "{t:?}");
        }
        for b in &batteries {
            assert!((0.0..=100.5).contains(&b.charge_percent), "{b:?}");
        }
    }
}
