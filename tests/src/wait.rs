//! Bounded waits. A test that waits for something asserts it happens within a
//! deadline, polling with a short sleep; it never loops without a bound.

/// Polls `cond` (a `bool` expression) every 10 ms until it is true or
/// `within` (a `Duration`) has passed, then panics naming the condition and
/// the optional formatted message. Blocks the thread: use
/// [`eventually_async!`](crate::eventually_async) inside async code.
///
/// ```
/// use std::time::Duration;
/// let start = std::time::Instant::now();
/// balancer_tests::eventually!(Duration::from_secs(1), start.elapsed() > Duration::from_millis(20));
/// ```
#[macro_export]
macro_rules! eventually {
    ($within:expr, $cond:expr $(,)?) => {
        $crate::eventually!($within, $cond, "")
    };
    ($within:expr, $cond:expr, $($msg:tt)+) => {{
        let within: ::std::time::Duration = $within;
        let deadline = ::std::time::Instant::now() + within;
        loop {
            if $cond {
                break;
            }
            if ::std::time::Instant::now() >= deadline {
                panic!(
                    "not true within {:?}: {} {}",
                    within,
                    stringify!($cond),
                    format!($($msg)+)
                );
            }
            ::std::thread::sleep(::std::time::Duration::from_millis(10));
        }
    }};
}

/// Async twin of [`eventually!`](crate::eventually): `cond` may contain
/// `.await`; sleeps with `tokio::time::sleep` between polls.
#[macro_export]
macro_rules! eventually_async {
    ($within:expr, $cond:expr $(,)?) => {
        $crate::eventually_async!($within, $cond, "")
    };
    ($within:expr, $cond:expr, $($msg:tt)+) => {{
        let within: ::std::time::Duration = $within;
        let deadline = ::std::time::Instant::now() + within;
        loop {
            if $cond {
                break;
            }
            if ::std::time::Instant::now() >= deadline {
                panic!(
                    "not true within {:?}: {} {}",
                    within,
                    stringify!($cond),
                    format!($($msg)+)
                );
            }
            ::tokio::time::sleep(::std::time::Duration::from_millis(10)).await;
        }
    }};
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn eventually_returns_once_the_condition_holds() {
        let mut polls = 0;
        crate::eventually!(Duration::from_secs(1), {
            polls += 1;
            polls == 3
        });
        assert_eq!(polls, 3);
    }

    #[test]
    #[should_panic(expected = "not true within")]
    fn eventually_panics_when_the_deadline_passes() {
        crate::eventually!(Duration::from_millis(30), false, "as expected");
    }
}
