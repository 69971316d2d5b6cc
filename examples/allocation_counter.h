// Counts the process's heap allocations (malloc and everything built on it: operator new, the
// C++ containers, libkvfuse's own) while a counting window is open, to check that a warmed-up
// engine makes none per request. allocation_counter.cpp replaces malloc and its relatives for
// the whole program; under AddressSanitizer (which owns malloc) nothing is counted.
#pragma once

namespace allocation_counter {

// False under a sanitizer that replaces malloc: then counts stay 0 and checks must skip.
bool available();
// Allocations made from now on, by any thread, are added to `slot` (0, 1 or 2), until stop().
void start(int slot);
void stop();
int current();  // the open slot, -1 when none
long count(int slot);
void reset();

// Counts in `slot` while alive, if a window is open; then back to the slot before.
class CountApart {
public:
    explicit CountApart(int slot) : previous_(current()) {
        if (previous_ >= 0) start(slot);
    }
    ~CountApart() {
        if (previous_ >= 0) start(previous_);
    }
    CountApart(const CountApart&) = delete;
    CountApart& operator=(const CountApart&) = delete;

private:
    int previous_;
};

}  // namespace allocation_counter
