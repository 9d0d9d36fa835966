//! The local lab: a multi-node mesh on one machine, nodes and pods being network namespaces.

pub mod netns;
