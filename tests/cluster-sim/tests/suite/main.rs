//! End-to-end suite: kube-rs clients and the real `kubectl` against a fresh simulator per
//! test. One test binary (modules below) so the heavy kube dependency links once.

mod admission;
mod common;
mod concurrency;
mod faults;
mod gc;
mod kube_client;
mod kubectl;
mod pod_security;
mod rbac;
mod ssa;
mod validation;
mod watch;
mod workloads;
