//! Sources that produce tasks.
