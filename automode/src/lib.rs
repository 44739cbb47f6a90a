//! stigmer-automode
