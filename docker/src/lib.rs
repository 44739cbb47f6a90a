//! stigmer-docker
