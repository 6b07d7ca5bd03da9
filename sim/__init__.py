# Every double in one place (issue 18 item 3): what cannot exist on this
# machine (contactor, power modules, the car's BMS, flash, the serial cable)
# and the local brokers, meter peer, scripted piles and fake platforms the
# tests and tools drive, with the drivers the tools front (scenarios, fleet,
# chaos, fuzz, demo, benchmarks). firmware/ holds only what a board flashes;
# host/ holds only the gateway and the reference platform. docs/sim.md lists
# the modules and the byte links opened by URL.
