//! stigmer-daytona
