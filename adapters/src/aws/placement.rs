//! Where a grow's instances go, and the ClientToken of each launch call.
//!
//! Pure functions, so that a retried grow (same token, same fleet) makes exactly the
//! same calls with exactly the same tokens, and EC2's ClientToken idempotency holds.

/// A configured subnet and the availability zone it lies in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Subnet {
    pub id: String,
    pub zone: String,
}

/// How many instances to launch into each subnet (in config order, none with zero) so
/// that the fleet ends balanced across zones, then across subnets within a zone.
///
/// `existing` is the subnet id of each live instance of the fleet; instances in
/// subnets that are not configured count for their zone only if the zone has a
/// configured subnet (the pair's second element gives their zone).
pub(crate) fn split_launch(
    count: u32,
    subnets: &[Subnet],
    existing: &[(Option<String>, Option<String>)],
) -> Vec<(usize, u32)> {
    // Zones in the order their first subnet is configured, with their live instances.
    let mut zones: Vec<(&str, u32)> = Vec::new();
    for subnet in subnets {
        if !zones.iter().any(|(zone, _)| *zone == subnet.zone) {
            zones.push((&subnet.zone, 0));
        }
    }
    // Each configured subnet, in config order, with its live instances and the
    // instances this grow launches into it.
    let mut loads: Vec<SubnetLoad> = subnets
        .iter()
        .map(|subnet| SubnetLoad {
            subnet,
            live: 0,
            planned: 0,
        })
        .collect();
    for (subnet_id, zone) in existing {
        let configured = subnet_id
            .as_deref()
            .and_then(|id| loads.iter_mut().find(|load| load.subnet.id == id));
        let zone = match &configured {
            Some(load) => Some(load.subnet.zone.as_str()),
            None => zone.as_deref(),
        };
        if let Some((_, live)) = zone.and_then(|z| zones.iter_mut().find(|(known, _)| *known == z))
        {
            *live += 1;
        }
        if let Some(load) = configured {
            load.live += 1;
        }
    }

    for _ in 0..count {
        // The first zone with the fewest instances (none when no subnet is configured).
        let Some((zone, zone_live)) = zones.iter_mut().min_by_key(|(_, live)| *live) else {
            break;
        };
        *zone_live += 1;
        // Within it, the first subnet with the fewest instances.
        let zone: &str = zone;
        if let Some(load) = loads
            .iter_mut()
            .filter(|load| load.subnet.zone == zone)
            .min_by_key(|load| load.live)
        {
            load.live += 1;
            load.planned += 1;
        }
    }
    loads
        .into_iter()
        .enumerate()
        .filter(|(_, load)| load.planned > 0)
        .map(|(index, load)| (index, load.planned))
        .collect()
}

/// A configured subnet's share of a grow.
struct SubnetLoad<'a> {
    subnet: &'a Subnet,
    /// Its live instances, and those the grow has placed in it so far.
    live: u32,
    /// The instances the grow launches into it.
    planned: u32,
}

/// The ClientToken of a grow's launch into one subnet: readable (it starts with the
/// grow's token), stable across processes and releases, unique per subnet, and within
/// EC2's 64 ASCII characters.
pub(crate) fn client_token(grow_token: &str, subnet_id: &str) -> String {
    let prefix: String = grow_token
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(47)
        .collect();
    let hash = fnv1a64(format!("{grow_token}\n{subnet_id}").as_bytes());
    format!("{prefix}-{hash:016x}")
}

/// FNV-1a: a fixed, documented hash, so tokens never change with the toolchain.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnets(spec: &[(&str, &str)]) -> Vec<Subnet> {
        spec.iter()
            .map(|(id, zone)| Subnet {
                id: id.to_string(),
                zone: zone.to_string(),
            })
            .collect()
    }

    fn existing(spec: &[&str]) -> Vec<(Option<String>, Option<String>)> {
        spec.iter().map(|s| (Some(s.to_string()), None)).collect()
    }

    #[test]
    fn an_empty_fleet_is_spread_evenly() {
        let s = subnets(&[("a", "z1"), ("b", "z2"), ("c", "z3")]);
        assert_eq!(split_launch(7, &s, &[]), [(0, 3), (1, 2), (2, 2)]);
        assert_eq!(split_launch(1, &s, &[]), [(0, 1)]);
        assert_eq!(split_launch(0, &s, &[]), []);
    }

    #[test]
    fn launches_fill_the_emptiest_zones_first() {
        let s = subnets(&[("a", "z1"), ("b", "z2")]);
        assert_eq!(split_launch(2, &s, &existing(&["a", "a", "a"])), [(1, 2)]);
        assert_eq!(
            split_launch(5, &s, &existing(&["a", "a", "a"])),
            [(0, 1), (1, 4)]
        );
    }

    #[test]
    fn zones_come_before_subnets() {
        // two subnets in z1, one in z2: zone balance first, then subnets within z1
        let s = subnets(&[("a", "z1"), ("b", "z1"), ("c", "z2")]);
        assert_eq!(split_launch(4, &s, &[]), [(0, 1), (1, 1), (2, 2)]);
        // an instance in an unconfigured subnet of z2 still counts for z2
        let outside = vec![(Some("x".to_string()), Some("z2".to_string()))];
        assert_eq!(split_launch(1, &s, &outside), [(0, 1)]);
    }

    #[test]
    fn client_tokens_are_stable_distinct_and_short() {
        let long = "x".repeat(64);
        let a = client_token(&long, "subnet-1");
        assert_eq!(a.len(), 64);
        assert!(a.is_ascii());
        assert_eq!(a, client_token(&long, "subnet-1"));
        assert_ne!(a, client_token(&long, "subnet-2"));
        assert_ne!(
            client_token("web-17", "subnet-1"),
            client_token("web-18", "subnet-1")
        );
        // pinned: the token must never change between releases
        assert_eq!(
            client_token("web-17", "subnet-1"),
            "web-17-12e47f115aed6465"
        );
    }
}
