//! Talking to a Kubernetes API server, as much as joining a node takes: a kubeconfig's
//! access ([`kubeconfig`]), JSON requests over HTTPS ([`client`]), and kubeadm's token
//! discovery of a cluster ([`cluster_info`]). The server uses it to mint bootstrap
//! tokens and approve kubelets' certificates, the node to find and trust its cluster.

pub mod client;
pub mod cluster_info;
pub mod kubeconfig;
