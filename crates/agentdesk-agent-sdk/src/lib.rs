//! What an agentdesk agent is. An agent is a crate that declares a [`Manifest`]: its name,
//! version, description and the actions it adds to the permission catalog (as the resource
//! `agent:<name>`). Later the SDK grows the job context through which an agent reaches the core
//! for the user its job runs for; agents never depend on the API crate.

use serde::Serialize;

/// One action an agent declares for the permission catalog.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ActionSpec {
    /// The action's name (`read`, `upload`, ...).
    pub name: &'static str,
    /// What the action allows.
    pub description: &'static str,
}

/// An agent's declaration of itself.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Manifest {
    /// The agent's name (`pdf_processing`); its resource is `agent:<name>`.
    pub name: &'static str,
    /// The agent's version.
    pub version: &'static str,
    /// What the agent does.
    pub description: &'static str,
    /// The actions it declares.
    pub actions: Vec<ActionSpec>,
}

impl Manifest {
    /// The permission resource of this agent: `agent:<name>`.
    pub fn resource(&self) -> String {
        format!("agent:{}", self.name)
    }
}

/// The core re-exported for agents, so that they need no direct dependency on it.
pub use agentdesk_core as core;
