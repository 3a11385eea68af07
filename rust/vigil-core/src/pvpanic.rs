// SPDX-License-Identifier: GPL-2.0-or-later

//! pvpanic register semantics (Linux `include/uapi/misc/pvpanic.h` ABI).
//!
//! A read returns the mask of events the device advertises. A write reports
//! one event: the first known bit set, in the priority order of QEMU's C
//! device (panicked, then crash loaded, then shutdown). Like the C device,
//! a known bit is acted on even when the `events` mask does not advertise it:
//! the mask tells the guest what to expect, it is not a filter, and libvirt
//! and guests written against the C device rely on that behaviour.

/// The guest panicked.
pub const PANICKED: u8 = 1 << 0;
/// The guest loaded a crash kernel (kdump) after a panic.
pub const CRASH_LOADED: u8 = 1 << 1;
/// The guest asks the host to shut it down.
pub const SHUTDOWN: u8 = 1 << 2;
/// Every event this device knows.
pub const ALL: u8 = PANICKED | CRASH_LOADED | SHUTDOWN;

/// What a guest write asks the host to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// `GUEST_PANICKED`, then the `-action panic=` behaviour.
    Panicked,
    /// `GUEST_CRASHLOADED`; the guest keeps running.
    CrashLoaded,
    /// `GUEST_PVSHUTDOWN`, then a guest-initiated shutdown.
    Shutdown,
}

/// The decoded meaning of one guest write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Write {
    /// The event to raise, if any known bit was set.
    pub event: Option<Event>,
    /// Bits this device does not know (worth a guest-error log line).
    pub unknown: u64,
}

/// Decodes a guest write of `value` to the pvpanic register.
#[must_use]
pub fn decode_write(value: u64) -> Write {
    let unknown = value & !u64::from(ALL);
    let event = if value & u64::from(PANICKED) != 0 {
        Some(Event::Panicked)
    } else if value & u64::from(CRASH_LOADED) != 0 {
        Some(Event::CrashLoaded)
    } else if value & u64::from(SHUTDOWN) != 0 {
        Some(Event::Shutdown)
    } else {
        None
    };
    Write { event, unknown }
}

/// Checks a user-supplied `events` property. QEMU's C devices accept any
/// value and advertise it as is, and configurations written for them (for
/// example `-global pvpanic.events=15`) must keep starting: unknown bits are
/// accepted and advertised too, with a warning to return for the user.
#[must_use]
pub fn events_warning(events: u8) -> Option<String> {
    (events & !ALL != 0).then(|| {
        format!(
            "property 'events' has bits {:#x} no pvpanic event is defined for (known: \
             panicked={PANICKED:#x}, crash-loaded={CRASH_LOADED:#x}, shutdown={SHUTDOWN:#x}); the \
             guest is told about them as given",
            events & !ALL
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_follows_the_c_device() {
        assert_eq!(decode_write(0).event, None);
        assert_eq!(decode_write(1).event, Some(Event::Panicked));
        assert_eq!(decode_write(2).event, Some(Event::CrashLoaded));
        assert_eq!(decode_write(4).event, Some(Event::Shutdown));
        assert_eq!(decode_write(3).event, Some(Event::Panicked));
        assert_eq!(decode_write(6).event, Some(Event::CrashLoaded));
        assert_eq!(decode_write(7).event, Some(Event::Panicked));
    }

    #[test]
    fn unknown_bits_are_reported_and_known_ones_still_act() {
        assert_eq!(
            decode_write(0x80),
            Write {
                event: None,
                unknown: 0x80
            }
        );
        assert_eq!(
            decode_write(0xfc),
            Write {
                event: Some(Event::Shutdown),
                unknown: 0xf8
            }
        );
        assert_eq!(decode_write(u64::MAX).unknown, u64::MAX & !7);
    }

    #[test]
    fn events_property_accepts_what_the_c_device_accepts() {
        for ok in [0, PANICKED, PANICKED | CRASH_LOADED, ALL] {
            assert_eq!(events_warning(ok), None);
        }
        // 15 = every known bit and one more: C QEMU starts, so do we.
        let w = events_warning(15).unwrap();
        assert!(w.contains("'events'") && w.contains("0x8"), "{w}");
        assert!(events_warning(0xff).unwrap().contains("0xf8"));
    }
}
