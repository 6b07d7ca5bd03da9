/* The custody chain of a bill, as the code implements it (docs/model.md).

   pile journal -> pile link -> bridge store -> broker -> platform store,
   and back: 0x40 (bridge has it), confirmation naming the content hash
   (platform has it), 0xE4 settled (pile may reclaim), 0xE3 (pile did).

   One process, one loop of guarded steps. Every step is a macro
   T_<name>(i) of the form "guard -> actions" over bill i; the loop runs
   each of them for every bill. sim/model_table.py reads these macros
   (default configuration, no -D flags) into the transition table the
   chaos replay walks (tests/test_model.py), so there is one model.
   Inside a T_ macro: only guards, assignments, ++/--, assert(), and
   the CAN()/USE() fault budget (the replay lifts the budgets).

   Bounds (-D to change): NB bills started one after the other, JCAP
   unconfirmed bills the journal takes before it refuses a start,
   MAXFAULT faults in all (a crash of any actor, a duplicated delivery,
   a forged bill or confirmation); losses and stops unbounded (bounded
   by MAXLOSS, MAXSTOP under -DLIVE / -DMUTE).
   Modes: default = safety (retries whenever the guard allows, losses
   unbounded); -DLIVE = faults bounded and a retry only when nothing of
   that bill is in flight (timers outlast round trips), so every run ends
   and "<> ALLDONE" is checked; -DMUTE = a host that never answers (for
   the outbox's turns).
   Seeded bugs (each must give a counterexample): BUG_EVICT_ON_ACK,
   BUG_ACK_FIRST, BUG_SERIAL_ONLY, BUG_RAM_DEDUP, BUG_ANY_SENDER,
   BUG_OLDEST. */

#ifndef NB
#define NB 2
#endif
#ifndef JCAP
#define JCAP 1
#endif
#ifndef MAXFAULT
#define MAXFAULT 2
#endif
#ifndef MAXLOSS
#define MAXLOSS 1
#endif
#ifndef MAXREOFFER
#define MAXREOFFER 1
#endif

/* pile journal state of a bill (firmware/journal.py) */
#define P_NONE      0
#define P_OPEN      1
#define P_SEALED    2   /* pending: sealed, not confirmed by the host */
#define P_CONFIRMED 3   /* host-confirmed: 0x40 */
#define P_SETTLED   4   /* 0xE4 result 0 */
#define P_EVICTED   5   /* compacted away (serial kept in the ring) */
/* bridge store state (host/store.py) */
#define B_NONE      0
#define B_STORED    1   /* committed, unconfirmed */
#define B_CONF      2   /* platform confirmed, 0xE4 due */
#define B_SETTLED   3   /* 0xE3 received */
/* content of a copy / hash named by a confirmation */
#define C_NONE      0
#define C_TRUE      1   /* the bill the pile sealed */
#define C_FORGED    2   /* another body under the same serial */

/* fault budgets; the replay (sim/model_table.py) reads CAN as true
   and USE as nothing */
#define CAN(c, m)   (c < m)
#define USE(c)      c++

#ifdef LIVE
#define LOSS        CAN(losses, MAXLOSS)
#define LOST        USE(losses)
#define QUIET_P(i)  (dack[i] == 0 && ds[i] == 0 && ur[i] == 0)
#define QUIET_B(i)  (cq[i] == 0 && iq[i] == 0)
#define QUIET_S(i)  (ur[i] == 0)
#define REOFFER     CAN(reoffers, MAXREOFFER)
#define REOFFERED   USE(reoffers)
#else
#ifdef MUTE
#define LOSS        1
#define LOST        skip
#define QUIET_P(i)  1
#define QUIET_B(i)  1
#define QUIET_S(i)  1
#define REOFFER     1
#define REOFFERED   skip
#else
#define LOSS        1
#define LOST        skip
#define QUIET_P(i)  1
#define QUIET_B(i)  1
#define QUIET_S(i)  1
#define REOFFER     1
#define REOFFERED   skip
#endif
#endif
/* stops after the end: any number in the safety run; a few under an LTL
   claim (an endless run of refused stops is no progress of anyone) */
#if defined(LIVE) || defined(MUTE)
#define STOPS       CAN(stops, MAXSTOP)
#define STOPPED     USE(stops)
#else
#define STOPS       1
#define STOPPED     skip
#endif
#ifndef MAXSTOP
#define MAXSTOP 2
#endif
#ifdef MUTE
#define ANSWERS     0
#else
#define ANSWERS     1
#endif

/* ---- state (arrays sized 3: NB <= 3) ---- */
byte pj[3];         /* pile journal */
byte sealedn[3];    /* bills sealed per trade serial */
byte gun;           /* 0 idle, i+1: session of bill i open */
byte nstart;        /* bills started so far (in order) */
byte ls1 = 3;       /* outbox (RAM): the bill sent last (3: none since login) */
byte ls2 = 3;       /* ... and the one sent before it */
byte up[3];         /* 0x3B+0xEB frames in flight pile -> bridge (0..2) */
byte dack[3];       /* 0x40 in flight bridge -> pile */
byte ds[3];         /* 0xE4 in flight bridge -> pile */
byte ur[3];         /* 0xE3 in flight pile -> bridge */
byte bs[3];         /* bridge store */
bool bpend[3];      /* BUG_ACK_FIRST: 0x40 sent, commit not done (RAM) */
byte pq[3];         /* bill message queued at the broker for the platform (0..2) */
byte cq[3];         /* platform confirmation queued for the bridge: the hash it names */
bool iq[3];         /* intruder's confirmation (right hash, no `auth`) */
bool fq[3];         /* forged bill (C_FORGED) queued for the platform */
byte pc[3];         /* platform store: content held */
byte pcount[3];     /* platform rows stored per serial */
bool pseen[3];      /* platform RAM: serials seen (BUG_RAM_DEDUP's only record) */
byte faults;        /* crashes of any actor, duplicates, forgeries so far */
byte losses, reoffers, stops;  /* -DLIVE, -DMUTE only */

#define UNCONF(k)   (pj[k] == P_OPEN || pj[k] == P_SEALED)
#define OCC(k)      (pj[k] != P_NONE && pj[k] != P_EVICTED)
#define NUNCONF     (UNCONF(0) + UNCONF(1) + UNCONF(2))
#define NOCC        (OCC(0) + OCC(1) + OCC(2))
#define NSEALED     ((pj[0] == P_SEALED) + (pj[1] == P_SEALED) + (pj[2] == P_SEALED))
#define DONE(k)     (k >= NB || ((pj[k] == P_SETTLED || pj[k] == P_EVICTED) && \
                     bs[k] == B_SETTLED && pc[k] == C_TRUE && pcount[k] == 1))
#define ALLDONE     (nstart == NB && DONE(0) && DONE(1) && DONE(2))

/* ---- the pile: firmware/pile.py, firmware/session.py, firmware/journal.py,
   firmware/outbox.py ---- */

/* a start (0x34 or a card) executes: Journal.open_session; a full journal
   (can_start false: JCAP unconfirmed) refuses it and writes nothing */
#define T_P_start(i) (i == nstart && nstart < NB && gun == 0 && NUNCONF < JCAP && \
                      NOCC < JCAP) -> pj[i] = P_OPEN; gun = i + 1; nstart++
/* a stop command while charging, or the automatic stop: Journal.seal */
#define T_P_stop(i) (gun == i + 1) -> \
                     pj[i] = P_SEALED; gun = 0; sealedn[i]++; assert(sealedn[i] == 1)
#define T_P_autostop(i) (gun == i + 1) -> pj[i] = P_SEALED; gun = 0; sealedn[i]++; \
                     assert(sealedn[i] == 1)
/* a stop after the session ended (also after an automatic stop): refused,
   nothing written */
#define T_P_stop_idle(i) (gun == 0 && STOPS) -> STOPPED
/* power cut / reboot: RAM lost; an open session is sealed at boot as a
   0x83 bill (Journal.close_interrupted) */
#define T_P_crash(i) (gun == 0 && CAN(faults, MAXFAULT)) -> USE(faults); ls1 = 3; ls2 = 3
#define T_P_crash_open(i) (gun == i + 1 && CAN(faults, MAXFAULT)) -> USE(faults); ls1 = 3; ls2 = 3; \
                     pj[i] = P_SEALED; gun = 0; sealedn[i]++; assert(sealedn[i] == 1)
/* Outbox.due: a pending bill goes out (0x3B + 0xEB); of the bills due, the
   one sent longest ago (RANK: 0 not sent since login or before the last
   two, 1 sent the time before last, 2 sent last; ties in any order) */
#define RANK(k)     ((k == ls1) * 2 + (k == ls2 && k != ls1))
#define OLDER(k, i) (pj[k] == P_SEALED && RANK(k) < RANK(i))
#ifdef BUG_OLDEST
#define TURN(i)     !(i > 0 && pj[0] == P_SEALED) && !(i > 1 && pj[1] == P_SEALED)
#else
#define TURN(i)     !OLDER(0, i) && !OLDER(1, i) && !OLDER(2, i)
#endif
#define T_P_send(i) (pj[i] == P_SEALED && TURN(i) && up[i] == 0 && QUIET_P(i)) -> \
                     ls2 = ls1 * (ls1 != i) + ls2 * (ls1 == i); ls1 = i; up[i] = 1
/* a host-confirmed bill is offered again (hourly) until settled */
#define T_P_reoffer(i) (pj[i] == P_CONFIRMED && up[i] == 0 && QUIET_P(i) && REOFFER) -> \
                     REOFFERED; up[i] = 1
/* 0x40: Outbox.confirmed -> Journal.confirm */
#ifdef BUG_EVICT_ON_ACK
#define T_P_ack(i) (dack[i] > 0 && pj[i] == P_SEALED) -> dack[i] = 0; \
                     assert(pc[i] == C_TRUE); pj[i] = P_EVICTED
#else
#define T_P_ack(i) (dack[i] > 0 && pj[i] == P_SEALED) -> dack[i] = 0; pj[i] = P_CONFIRMED
#endif
#define T_P_ack_again(i) (dack[i] > 0 && pj[i] != P_SEALED) -> dack[i] = 0
/* 0xE4 result 0: Outbox.settled -> Journal.settle, 0xE3 back */
#define T_P_settle(i) (ds[i] > 0 && (pj[i] == P_SEALED || pj[i] == P_CONFIRMED)) -> \
                     ds[i] = 0; pj[i] = P_SETTLED; ur[i] = 1
#define T_P_settle_again(i) (ds[i] > 0 && (pj[i] == P_SETTLED || pj[i] == P_EVICTED)) -> \
                     ds[i] = 0; ur[i] = 1
/* compaction reclaims a settled bill: only once the platform stores it */
#define T_P_compact(i) (pj[i] == P_SETTLED) -> assert(pc[i] == C_TRUE && pcount[i] == 1); \
                     pj[i] = P_EVICTED
/* under pressure (a start needs room) compaction drops a host-confirmed
   bill, oldest first: only what the bridge holds durably */
#define T_P_press(i) (pj[i] == P_CONFIRMED && nstart < NB && gun == 0 && NOCC >= JCAP && \
                     NUNCONF < JCAP) -> assert(bs[i] != B_NONE); pj[i] = P_EVICTED

/* ---- the pile link: loss and duplication (tools/chaos.py corrupts or
   doubles frames; a power cut or a killed bridge drops them) ---- */
#define T_L_lose_up(i) (up[i] > 0 && LOSS) -> LOST; up[i]--
#define T_L_dup_up(i) (up[i] == 1 && CAN(faults, MAXFAULT)) -> USE(faults); up[i] = 2
#define T_L_lose_ack(i) (dack[i] > 0 && LOSS) -> LOST; dack[i] = 0
#define T_L_lose_settle(i) (ds[i] > 0 && LOSS) -> LOST; ds[i] = 0
#define T_L_lose_reply(i) (ur[i] > 0 && LOSS) -> LOST; ur[i] = 0

/* ---- the bridge: host/bridge.py, host/store.py, host/outbox.py ---- */
/* a bill frame: committed (synchronous=FULL) before the 0x40 goes down */
#ifdef BUG_ACK_FIRST
#define T_B_take_new(i) (ANSWERS && up[i] > 0 && bs[i] == B_NONE && !bpend[i]) -> up[i]--; \
                     bpend[i] = 1; dack[i] = 1
#define T_B_commit(i) (bpend[i]) -> bpend[i] = 0; bs[i] = B_STORED
#else
#define T_B_take_new(i) (ANSWERS && up[i] > 0 && bs[i] == B_NONE) -> up[i]--; \
                     bs[i] = B_STORED; dack[i] = 1
#define T_B_commit(i) (0) -> skip
#endif
/* a resend of a bill held: 0x40 again; one the platform confirmed: 0xE4 too */
#define T_B_take_resend(i) (ANSWERS && up[i] > 0 && (bs[i] == B_STORED || bpend[i])) -> \
                     up[i]--; dack[i] = 1
#define T_B_take_settled(i) (ANSWERS && up[i] > 0 && bs[i] >= B_CONF) -> up[i]--; \
                     dack[i] = 1; ds[i] = 1
/* published QoS 1 until confirmed (retry, and again after a reconnect) */
#define T_B_publish(i) (bs[i] == B_STORED && pq[i] == 0 && QUIET_B(i)) -> pq[i] = 1
/* a confirmation naming the bill's content hash, signed by the platform */
#ifdef BUG_SERIAL_ONLY
#define HASH_OK(i)  (cq[i] != C_NONE)
#else
#define HASH_OK(i)  (cq[i] == C_TRUE)
#endif
#define T_B_confirm(i) (cq[i] != C_NONE && HASH_OK(i) && bs[i] == B_STORED) -> cq[i] = 0; \
                     assert(pc[i] == C_TRUE); bs[i] = B_CONF; ds[i] = 1
/* the broker delivers a confirmation again (its PUBACK lost to a
   reconnect or a killed bridge): the same step, the copy still queued */
#define T_B_confirm_dup(i) (cq[i] != C_NONE && HASH_OK(i) && bs[i] == B_STORED && \
                     CAN(faults, MAXFAULT)) -> USE(faults); \
                     assert(pc[i] == C_TRUE); bs[i] = B_CONF; ds[i] = 1
#define T_B_confirm_again_dup(i) (cq[i] != C_NONE && HASH_OK(i) && bs[i] != B_STORED && \
                     CAN(faults, MAXFAULT)) -> USE(faults)
#define T_B_confirm_refused(i) (cq[i] != C_NONE && !HASH_OK(i)) -> cq[i] = 0
#define T_B_confirm_again(i) (cq[i] != C_NONE && HASH_OK(i) && bs[i] != B_STORED) -> cq[i] = 0
/* a confirmation without the platform's `auth` */
#ifdef BUG_ANY_SENDER
#define T_B_iconfirm(i) (iq[i] && bs[i] == B_STORED) -> iq[i] = 0; \
                     assert(pc[i] == C_TRUE); bs[i] = B_CONF; ds[i] = 1
#define T_B_iconfirm_refused(i) (iq[i] && bs[i] != B_STORED) -> iq[i] = 0
#else
#define T_B_iconfirm(i) (0) -> skip
#define T_B_iconfirm_refused(i) (iq[i]) -> iq[i] = 0
#endif
/* 0xE4 again until the pile answers 0xE3 (settle sweeper, next login) */
#define T_B_settle(i) (bs[i] == B_CONF && ds[i] == 0 && QUIET_S(i)) -> ds[i] = 1
#define T_B_settled(i) (ur[i] > 0 && bs[i] == B_CONF) -> ur[i] = 0; bs[i] = B_SETTLED
#define T_B_settled_again(i) (ur[i] > 0 && bs[i] != B_CONF) -> ur[i] = 0
/* SIGKILL: the store survives, RAM does not */
#define T_B_crash(i) CAN(faults, MAXFAULT) -> USE(faults); bpend[0] = 0; bpend[1] = 0; bpend[2] = 0

/* ---- the broker (Mosquitto, QoS 1, persistent sessions) ---- */
#define T_K_redeliver(i) (pq[i] == 1 && CAN(faults, MAXFAULT)) -> USE(faults); pq[i] = 2
#define T_K_restart(i) CAN(faults, MAXFAULT) -> USE(faults); pq[0] = 0; pq[1] = 0; pq[2] = 0; \
                     cq[0] = 0; cq[1] = 0; cq[2] = 0; fq[0] = 0; fq[1] = 0; fq[2] = 0; \
                     iq[0] = 0; iq[1] = 0; iq[2] = 0

/* ---- the platform: host/platform.py (store a serial once, durably;
   confirm every copy, naming the content hash of the copy it holds) ---- */
#ifdef BUG_RAM_DEDUP
#define FIRST(i)    (!pseen[i])
#define SEEN(i)     pseen[i] = 1
#else
#define FIRST(i)    (pc[i] == C_NONE)
#define SEEN(i)     skip
#endif
#define T_M_take_new(i) (pq[i] > 0 && FIRST(i)) -> pq[i]--; pc[i] = C_TRUE; pcount[i]++; \
                     SEEN(i); assert(pcount[i] == 1); cq[i] = C_TRUE
#define T_M_take_dup(i) (pq[i] > 0 && !FIRST(i) && pc[i] == C_TRUE) -> pq[i]--; cq[i] = C_TRUE
/* the pile's key verifies this copy and not the stored one: it replaces it */
#define T_M_take_replace(i) (pq[i] > 0 && !FIRST(i) && pc[i] == C_FORGED) -> pq[i]--; \
                     pc[i] = C_TRUE; cq[i] = C_TRUE
#define T_M_take_forged(i) (fq[i] && FIRST(i)) -> fq[i] = 0; pc[i] = C_FORGED; pcount[i]++; \
                     SEEN(i); assert(pcount[i] == 1); cq[i] = C_FORGED
#define T_M_take_forged_dup(i) (fq[i] && !FIRST(i)) -> fq[i] = 0; cq[i] = pc[i]
#define T_M_crash(i) CAN(faults, MAXFAULT) -> USE(faults); pseen[0] = 0; pseen[1] = 0; pseen[2] = 0

/* ---- intruders (tools/chaos.py forge_bill, forged_confirm) ---- */
/* a bill under a serial it has seen, reaching the platform */
#define T_I_forge(i) (bs[i] != B_NONE && fq[i] == 0 && CAN(faults, MAXFAULT)) -> \
                     USE(faults); fq[i] = 1
/* a confirmation naming the published bill's hash, without `auth` */
#define T_I_confirm(i) (bs[i] == B_STORED && !iq[i] && CAN(faults, MAXFAULT)) -> \
                     USE(faults); iq[i] = 1

#define STEP(T, i)  :: d_step { T(i) }
#define STEPS(T)    STEP(T, 0) STEP(T, 1) STEP(T, 2)
#define ONCE(T)     STEP(T, 0)

active proctype custody()
{
	do
	STEPS(T_P_start)
	STEPS(T_P_stop)
	STEPS(T_P_autostop)
	ONCE(T_P_stop_idle)
	ONCE(T_P_crash)
	STEPS(T_P_crash_open)
	STEPS(T_P_send)
	STEPS(T_P_reoffer)
	STEPS(T_P_ack)
	STEPS(T_P_ack_again)
	STEPS(T_P_settle)
	STEPS(T_P_settle_again)
	STEPS(T_P_compact)
	STEPS(T_P_press)
	STEPS(T_L_lose_up)
	STEPS(T_L_dup_up)
	STEPS(T_L_lose_ack)
	STEPS(T_L_lose_settle)
	STEPS(T_L_lose_reply)
	STEPS(T_B_take_new)
	STEPS(T_B_commit)
	STEPS(T_B_take_resend)
	STEPS(T_B_take_settled)
	STEPS(T_B_publish)
	STEPS(T_B_confirm)
	STEPS(T_B_confirm_dup)
	STEPS(T_B_confirm_again_dup)
	STEPS(T_B_confirm_refused)
	STEPS(T_B_confirm_again)
	STEPS(T_B_iconfirm)
	STEPS(T_B_iconfirm_refused)
	STEPS(T_B_settle)
	STEPS(T_B_settled)
	STEPS(T_B_settled_again)
	ONCE(T_B_crash)
	STEPS(T_K_redeliver)
	ONCE(T_K_restart)
	STEPS(T_M_take_new)
	STEPS(T_M_take_dup)
	STEPS(T_M_take_replace)
	STEPS(T_M_take_forged)
	STEPS(T_M_take_forged_dup)
	ONCE(T_M_crash)
	STEPS(T_I_forge)
	STEPS(T_I_confirm)
	:: ALLDONE -> break
	od
}

/* liveness with faults bounded (-DLIVE): every started bill ends stored
   once at the platform, settled at the bridge and released on the pile */
ltl settles { <> ALLDONE }
/* outbox turns (-DMUTE: the host never answers, the link loses every
   bill): each pending bill is sent again and again, however many others
   wait */
#define WAITS(k)    [] ((pj[k] == P_SEALED) -> <> (ls1 == k || pj[k] != P_SEALED))
ltl turns { WAITS(0) && WAITS(1) && WAITS(2) }
