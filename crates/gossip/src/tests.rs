//! Gossip state machine tests, and the simulation of 10 to 100 members over a lossy network.

use super::*;

fn state(id: &str, generation: u64) -> MemberState {
    MemberState {
        id: id.into(),
        address: format!("{id}:7000"),
        zone: "z".into(),
        weight: 1,
        status: Status::Normal,
        incarnation: 1,
        lease: 0,
        run: generation,
        generation,
        heartbeat: 0,
        suspects: Vec::new(),
        formed: false,
        release: String::new(),
        protocol: 0,
    }
}

const SUSPECT_MS: u64 = 5_000;

#[test]
fn merge_keeps_newer_and_converges_in_any_order() {
    let mut a1 = state("a", 1);
    a1.heartbeat = 5;
    let mut a2 = state("a", 2);
    a2.heartbeat = 1;
    let mut b = state("b", 1);
    b.heartbeat = 3;
    let inputs = [vec![a1.clone(), b.clone()], vec![a2.clone()], vec![a1.clone()]];
    let mut forward = Gossip::new(None, SUSPECT_MS, 0);
    for batch in inputs.iter() {
        forward.merge(batch.clone(), 0);
    }
    let mut backward = Gossip::new(None, SUSPECT_MS, 0);
    for batch in inputs.iter().rev() {
        backward.merge(batch.clone(), 0);
        backward.merge(batch.clone(), 0); // duplicates change nothing
    }
    assert_eq!(forward.states(), backward.states());
    assert_eq!(forward.state("a").unwrap().generation, 2, "a restart (new generation) wins over a higher heartbeat");
}

#[test]
fn removal_outranks_every_generation_of_its_incarnation_but_not_a_new_incarnation() {
    let mut observer = Gossip::new(Some(state("me", 1)), SUSPECT_MS, 0);
    let mut x = state("x", 3);
    x.heartbeat = 10;
    observer.merge(vec![x.clone()], 0);
    assert!(observer.remove("x"));
    x.heartbeat = 50;
    observer.merge(vec![x.clone()], 0);
    assert_eq!(observer.state("x").unwrap().status, Status::Removed);
    // Restarted on its old disk: a new generation, the same incarnation. Still removed.
    observer.merge(vec![state("x", 4)], 0);
    assert_eq!(observer.state("x").unwrap().status, Status::Removed);
    // Its removal reaches a view that never heard of it, and that view tells it.
    let mut restarted = Gossip::new(Some(state("x", 5)), SUSPECT_MS, 0);
    assert!(!restarted.removed_me());
    restarted.merge_digest(observer.digest(), 0);
    assert!(restarted.removed_me(), "a removed node learns it from any peer");
    assert_eq!(restarted.my_state().unwrap().status, Status::Normal, "nobody else changes our own state");
    // The same id on an empty disk is a new incarnation: a new member.
    let mut fresh = state("x", 6);
    fresh.incarnation = 2;
    observer.merge(vec![fresh], 0);
    assert_eq!(observer.state("x").unwrap().status, Status::Normal);
    assert!(!observer.remove("me"));
}

#[test]
fn removed_sets_merge_as_a_union_in_any_order() {
    let mut a = Gossip::new(None, SUSPECT_MS, 0);
    let mut b = Gossip::new(None, SUSPECT_MS, 0);
    a.merge_removed([("x".to_owned(), 1), ("y".to_owned(), 2)]);
    b.merge_removed([("y".to_owned(), 2), ("z".to_owned(), 3)]);
    let (da, db) = (a.digest(), b.digest());
    a.merge_digest(db.clone(), 0);
    b.merge_digest(da, 0);
    assert_eq!(a.removed(), b.removed());
    assert_eq!(a.removed().len(), 3);
    assert!(!a.merge_digest(db, 0), "merging again changes nothing");
}

#[test]
fn a_new_incarnation_moves_its_generation_past_its_predecessor() {
    // The old self ran with a generation ahead of the wall clock; the new incarnation starts lower.
    let mut old = state("x", 100);
    old.heartbeat = 7;
    let mut peer = Gossip::new(Some(state("p", 1)), SUSPECT_MS, 0);
    peer.merge(vec![old], 0);
    let mut new = state("x", 90);
    new.incarnation = 2;
    let mut x = Gossip::new(Some(new), SUSPECT_MS, 0);
    x.merge_digest(peer.digest(), 0);
    assert_eq!(x.my_state().unwrap().generation, 101);
    x.tick(1);
    peer.merge_digest(x.digest(), 1);
    assert_eq!(peer.state("x").unwrap().incarnation, 2, "the new incarnation's state wins");
}

#[test]
fn states_about_ourselves_are_ignored() {
    let mut me = Gossip::new(Some(state("me", 1)), SUSPECT_MS, 0);
    let mut forged = state("me", 9);
    forged.run = 1; // this very run
    forged.status = Status::Left;
    assert!(!me.merge(vec![forged.clone()], 0));
    assert_eq!(me.my_state().unwrap().status, Status::Normal);
    // From another run of ours: we only move our generation past it; our status stays ours.
    forged.run = 7;
    assert!(me.merge(vec![forged], 0));
    assert_eq!((me.my_state().unwrap().status, me.my_state().unwrap().generation), (Status::Normal, 10));
}

/// Three members; `c` stops. Both others must suspect it before it is down.
#[test]
fn down_needs_two_reporters() {
    let mut a = Gossip::new(Some(state("a", 1)), SUSPECT_MS, 0);
    let mut b = Gossip::new(Some(state("b", 1)), SUSPECT_MS, 0);
    let mut c = Gossip::new(Some(state("c", 1)), SUSPECT_MS, 0);
    let exchange = |x: &mut Gossip, y: &mut Gossip, now| {
        let xs = x.states();
        x.merge(y.states(), now);
        y.merge(xs, now);
    };
    for t in 0..3 {
        let now = t * 1000;
        for g in [&mut a, &mut b, &mut c] {
            g.tick(now);
        }
        exchange(&mut a, &mut b, now);
        exchange(&mut b, &mut c, now);
        exchange(&mut a, &mut c, now);
    }
    // c stops; a keeps hearing b.
    for t in 3..20 {
        let now = t * 1000;
        a.tick(now);
        b.tick(now);
        if t < 12 {
            // Only a gossips with b late: until then b has not published its suspicion.
            exchange(&mut a, &mut b, now);
        }
        if t == 9 {
            assert!(a.views(now).iter().any(|v| v.state.id == "c" && v.suspected));
        }
    }
    let now = 19_000;
    assert!(a.is_down("c", now), "a and b both suspect c");
    assert!(!a.is_down("b", now) || !b.is_down("a", now));
}

#[test]
fn a_single_suspicion_does_not_make_a_member_down() {
    // a stops hearing from c, but b still does and keeps c fresh.
    let mut a = Gossip::new(Some(state("a", 1)), SUSPECT_MS, 0);
    let mut view_c = state("c", 1);
    a.merge(vec![state("b", 1), view_c.clone()], 0);
    let mut b_state = state("b", 1);
    for t in 1..30u64 {
        let now = t * 1000;
        a.tick(now);
        b_state.heartbeat += 1;
        view_c.heartbeat += 1;
        // a only hears b, whose entry has no suspicion of c.
        a.merge(vec![b_state.clone()], now);
    }
    assert!(a.views(29_000).iter().any(|v| v.state.id == "c" && v.suspected));
    assert!(!a.is_down("c", 29_000), "one observer's suspicion is not enough");
}

/// A simulated cluster: every member ticks and gossips with `FANOUT` random live peers per
/// round (1 s), push-pull, over a network that drops `DROP_PERCENT` of exchanges.
struct Sim {
    members: Vec<Gossip>,
    alive: Vec<bool>,
    rng: Rng,
    /// Rounds run so far (the simulated clock, in seconds).
    t: u64,
    /// Partition: a member's group; exchanges across groups are lost.
    group: Vec<usize>,
    /// Deliver every exchange one round late (states sent now, merged next round).
    delay: bool,
    in_flight: Vec<(usize, Vec<MemberState>)>,
}

const FANOUT: usize = 2;
const DROP_PERCENT: usize = 10;

impl Sim {
    fn new(n: usize, seed: u64) -> Sim {
        let all: Vec<MemberState> = (0..n).map(|i| state(&format!("m{i}"), 1)).collect();
        let members = (0..n)
            .map(|i| {
                let mut g = Gossip::new(Some(all[i].clone()), SUSPECT_MS, 0);
                g.merge(all.clone(), 0);
                g
            })
            .collect();
        Sim {
            members,
            alive: vec![true; n],
            rng: Rng::new(seed),
            t: 0,
            group: vec![0; n],
            delay: false,
            in_flight: Vec::new(),
        }
    }

    fn index(address: &str) -> usize {
        address.trim_start_matches('m').split(':').next().unwrap().parse().unwrap()
    }

    fn round(&mut self) {
        self.t += 1;
        let now = self.t * 1000;
        for (to, states) in std::mem::take(&mut self.in_flight) {
            if self.alive[to] {
                self.members[to].merge(states, now);
            }
        }
        for i in 0..self.members.len() {
            if !self.alive[i] {
                continue;
            }
            self.members[i].tick(now);
            let mut targets = self.members[i].targets(FANOUT, now, &mut self.rng);
            if targets.is_empty() {
                targets.push("m0:7000".into()); // the seed
            }
            for target in targets {
                let j = Sim::index(&target);
                if j == i || !self.alive[j] || self.group[i] != self.group[j] || self.rng.below(100) < DROP_PERCENT {
                    continue;
                }
                let mine = self.members[i].states();
                let theirs = self.members[j].states();
                if self.delay {
                    self.in_flight.push((j, mine));
                    self.in_flight.push((i, theirs));
                } else {
                    self.members[j].merge(mine, now);
                    self.members[i].merge(theirs, now);
                }
            }
        }
    }

    /// Rounds until a new member, knowing only the seed, is known to every member.
    fn join_rounds(&mut self) -> u64 {
        let id = self.members.len();
        let joiner = state(&format!("m{id}"), 1);
        self.members.push(Gossip::new(Some(joiner), SUSPECT_MS, 0));
        self.alive.push(true);
        self.group.push(0);
        for rounds in 1..200 {
            self.round();
            if self.members.iter().all(|g| g.state(&format!("m{id}")).is_some()) {
                return rounds;
            }
        }
        panic!("join did not spread");
    }

    /// Rounds from a member's failure until every live member considers it down.
    fn failure_rounds(&mut self) -> u64 {
        let victim = 1;
        self.alive[victim] = false;
        for rounds in 1..300 {
            self.round();
            let now = self.t * 1000;
            if rounds % 4 == 0 {
                assert_eq!(self.false_downs(now), 0, "a live member was marked down");
            }
            if self.members.iter().enumerate().filter(|(i, _)| self.alive[*i]).all(|(_, g)| g.is_down("m1", now)) {
                return rounds;
            }
        }
        panic!("failure was not detected");
    }

    fn false_downs(&self, now: u64) -> usize {
        self.members
            .iter()
            .enumerate()
            .filter(|(i, _)| self.alive[*i])
            .map(|(_, g)| g.views(now).iter().filter(|v| v.down && self.alive[Sim::index(&v.state.address)]).count())
            .sum()
    }
}

#[test]
fn figures_gossip_spreads_in_logarithmic_rounds() {
    let suspect_rounds = SUSPECT_MS / 1000;
    let mut rows = Vec::new();
    for n in [10usize, 25, 50, 100] {
        let (mut join_total, mut fail_total, runs) = (0, 0, 5u64);
        for seed in 1..=runs {
            let mut sim = Sim::new(n, seed * 7919);
            for _ in 0..5 {
                sim.round();
            }
            join_total += sim.join_rounds();
            // Quiet rounds, in which no live member may be marked down.
            for quiet in 0..30 {
                sim.round();
                if quiet % 5 == 4 {
                    assert_eq!(sim.false_downs(sim.t * 1000), 0, "a live member was marked down");
                }
            }
            fail_total += sim.failure_rounds();
        }
        let join = join_total as f64 / runs as f64;
        let fail = fail_total as f64 / runs as f64;
        rows.push((n, join, fail));
    }
    println!("gossip simulation: fanout {FANOUT}, {DROP_PERCENT}% of exchanges dropped, 1 round = 1 s, suspect after {suspect_rounds} rounds, mean of 5 runs");
    println!("  members | rounds until all know a joiner | rounds until all mark a failed member down | log2(n)");
    for (n, join, fail) in &rows {
        println!("  {n:>7} | {join:>31.1} | {fail:>41.1} | {:.1}", (*n as f64).log2());
    }
    // Logarithmic growth: 10x the members costs a few more rounds, not 10x.
    for (n, join, fail) in &rows {
        let log = (*n as f64).log2();
        assert!(*join <= 2.0 * log + 2.0, "join took {join} rounds for {n} members");
        assert!(*fail - suspect_rounds as f64 <= 2.0 * log + 4.0, "failure spread took {fail} rounds for {n} members");
    }
    let (small, large) = (rows[0], rows[rows.len() - 1]);
    assert!(
        large.1 / small.1 < 4.0,
        "join rounds grew {:.1}x from {} to {} members",
        large.1 / small.1,
        small.0,
        large.0
    );
}

/// A partition makes each side see the other as down (both sides confirm it); once healed,
/// everyone is up again within a few rounds. With every message delivered a round late, nobody
/// is marked down falsely and a failure is still confirmed.
#[test]
fn figures_partitions_heal_and_delays_cause_no_false_downs() {
    let mut sim = Sim::new(10, 42);
    for _ in 0..5 {
        sim.round();
    }
    sim.group = (0..10).map(|i| usize::from(i >= 6)).collect();
    for _ in 0..15 {
        sim.round();
    }
    let now = sim.t * 1000;
    assert!(sim.members[0].is_down("m7", now), "the majority side confirms the other side down");
    assert!(sim.members[7].is_down("m0", now), "and the minority side the majority");
    sim.group = vec![0; 10];
    let mut healed = None;
    for rounds in 1..30 {
        sim.round();
        if sim.false_downs(sim.t * 1000) == 0 {
            healed = Some(rounds);
            break;
        }
    }
    let healed = healed.expect("the partition did not heal");
    println!("partition of 6 | 4 for 15 rounds: each side saw the other down; healed in {healed} rounds");

    let mut delayed = Sim::new(10, 7);
    delayed.delay = true;
    for _ in 0..40 {
        delayed.round();
        assert_eq!(delayed.false_downs(delayed.t * 1000), 0, "a one-round delay caused a false down");
    }
    let rounds = delayed.failure_rounds();
    assert!(rounds <= 15, "failure took {rounds} rounds with delayed messages");
}

#[test]
fn a_peer_knowing_a_larger_lease_of_an_earlier_run_of_our_store_means_we_were_restored() {
    // This run found lease 65,537 recorded and recorded 131,073.
    let mut me = state("a", 5);
    me.lease = 131_073;
    let mut gossip = Gossip::new(Some(me.clone()), SUSPECT_MS, 0);
    gossip.set_lease_at_start(65_537);
    // What peers know of our earlier run, within what we found recorded: a plain restart.
    let mut earlier = state("a", 4);
    earlier.lease = 65_537;
    gossip.merge([earlier.clone()], 1);
    // Our own run's state echoed back by a peer.
    gossip.merge([me], 2);
    assert_eq!(gossip.restored_me(), None);
    // Another incarnation under our id (a wiped disk) says nothing about our counters.
    let mut wiped = state("a", 4);
    wiped.incarnation = 2;
    wiped.lease = 1 << 40;
    gossip.merge([wiped], 3);
    assert_eq!(gossip.restored_me(), None);
    // An earlier run held a lease our store never recorded: it is an older copy of itself.
    earlier.lease = 131_073;
    gossip.merge([earlier], 4);
    assert_eq!(gossip.restored_me(), Some(131_073));
    // Our lease growing past it later does not clear it: versions are still missing.
    gossip.set_lease(10 * 65_536);
    assert_eq!(gossip.restored_me(), Some(131_073));
    assert_eq!(gossip.my_state().map(|s| s.lease), Some(10 * 65_536));
}

#[test]
fn an_earlier_run_of_ours_at_a_higher_generation_is_moved_past() {
    // The earlier run had moved its generation to 8 (past a wiped predecessor's); this run
    // starts at 6 with its clock behind: peers would keep the dead run's state.
    let mut me = state("a", 6);
    me.run = 2;
    let mut gossip = Gossip::new(Some(me), SUSPECT_MS, 0);
    let mut earlier = state("a", 8);
    earlier.run = 1;
    assert!(gossip.merge([earlier], 1));
    assert_eq!(gossip.my_state().map(|s| s.generation), Some(9));
}

#[test]
fn an_earlier_run_with_the_same_generation_is_another_run() {
    // A restored copy whose clock is behind starts at the generation the run it lacks had.
    let mut me = state("a", 5);
    me.run = 2;
    me.lease = 65_537;
    let mut gossip = Gossip::new(Some(me), SUSPECT_MS, 0);
    gossip.set_lease_at_start(1);
    let mut later = state("a", 5);
    later.run = 1;
    later.lease = 131_073;
    gossip.merge([later], 1);
    assert_eq!(gossip.restored_me(), Some(131_073));
}

#[test]
fn our_own_state_from_before_a_generation_bump_is_not_another_run() {
    // This run found lease 65,537 recorded and recorded 131,073, at generation 5.
    let mut me = state("a", 5);
    me.lease = 131_073;
    let mut gossip = Gossip::new(Some(me.clone()), SUSPECT_MS, 0);
    gossip.set_lease_at_start(65_537);
    // The predecessor on a disk since wiped ran at generation 7 (our clock is behind): we move
    // past it.
    let mut wiped = state("a", 7);
    wiped.incarnation = 2;
    gossip.merge([wiped], 1);
    assert_eq!(gossip.my_state().map(|s| s.generation), Some(8));
    // A peer still gossips our state of this run from before the bump.
    gossip.merge([me], 2);
    assert_eq!(gossip.restored_me(), None, "our own run taken for an earlier one");
}

#[test]
fn the_lease_spreads_and_old_states_without_one_still_decode() {
    let mut gossip = Gossip::new(Some(state("a", 1)), SUSPECT_MS, 0);
    let before = gossip.my_state().unwrap().heartbeat;
    gossip.set_lease(65_536);
    gossip.set_lease(1);
    let me = gossip.my_state().unwrap();
    assert_eq!((me.lease, me.heartbeat), (65_536, before + 1));
    let json = r#"{"id":"b","address":"b:7000","zone":"z","weight":1,"status":"Normal","incarnation":1,"generation":1,"heartbeat":1,"suspects":[]}"#;
    let old: MemberState = serde_json::from_str(json).unwrap();
    assert_eq!(old.lease, 0);
}

/// Protocol v6 (release 0.1.0) has no `release` in member states: a v7 body cannot be read as
/// a v6 one (postcard writes fields in order), which is why each version keeps its shape; a
/// digest survives both encodings, losing only the release in v6.
#[test]
fn a_digest_is_encoded_in_each_protocol_version_and_only_v7_carries_the_release() {
    let mut a = state("a", 3);
    a.release = "0.2.0".into();
    a.suspects = vec![("b".into(), 7)];
    let digest =
        Digest { states: vec![a.clone(), state("b", 1)], removed: vec![("c".into(), 9)], clock_ms: 42, frozen: true };
    let v7 = digest.encode_as(7);
    let v6 = digest.encode_as(6);
    assert_eq!(Digest::decode_as(&v7, 7).unwrap(), digest);
    let old = Digest::decode_as(&v6, 6).unwrap();
    let mut expected = digest.clone();
    expected.states[0].release = String::new();
    assert_eq!(old, expected);
    assert!(Digest::decode_as(&v7, 6).is_err(), "a v6 reader must not take a v7 body");
    assert!(Digest::decode_as(&v6, 7).is_err(), "a v7 reader must not take a v6 body");
}

/// A state relayed through a member of the older release lost its release: the member's own
/// run did not change it, so the view keeps what it knew.
#[test]
fn a_release_is_not_forgotten_through_an_older_relay() {
    let mut g = Gossip::new(None, SUSPECT_MS, 0);
    let mut a = state("a", 1);
    a.release = "0.2.0".into();
    g.merge(vec![a.clone()], 0);
    let mut relayed = a.clone();
    relayed.release = String::new();
    relayed.heartbeat = 5;
    g.merge(vec![relayed], 10);
    let seen = g.views(10).into_iter().find(|v| v.state.id == "a").unwrap();
    assert_eq!((seen.state.heartbeat, seen.state.release.as_str()), (5, "0.2.0"));
}
