//! Socket options and ioctls for spliced sockets (placeholder: being written).
