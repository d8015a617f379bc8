"""The CAS Lab Streamlit app (``streamlit run app/main.py``).

Importing it sets how PyTorch's CPU threads wait, which must happen before torch is first imported (the
app's entry points and benchmarks import ``app`` first). PyTorch's threads (GNU OpenMP) wait for their
next piece of work by spinning. At the library's default (300,000 rounds) a waiting thread can hold a
core that a page, the server's event loop or another job needs; told never to spin
(``OMP_WAIT_POLICY=PASSIVE``), each of the thousands of parallel pieces of a batch pays for waking a
sleeping thread, and a batch of 29 PGD-20 attacks takes about 1.8x as long. A short spin
(``GOMP_SPINCOUNT``, 10,000 rounds) keeps the batch's speed and gives the core back soon after. Either
can be set in the environment to choose otherwise.
"""
import os

if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")
