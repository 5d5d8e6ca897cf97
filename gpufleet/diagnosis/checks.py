"""One check's result, as every layer reports it."""

from __future__ import annotations

from typing import TypedDict


class Check(TypedDict):
    name: str
    passed: bool | None  # None: could not be checked
    evidence: str  # the value actually seen
    problem: str | None
    fix: str | None  # the most likely fix, one line


def ok(name: str, evidence: str) -> Check:
    return {"name": name, "passed": True, "evidence": evidence, "problem": None, "fix": None}


def failed(name: str, evidence: str, problem: str, fix: str) -> Check:
    return {"name": name, "passed": False, "evidence": evidence, "problem": problem, "fix": fix}


def unverified(name: str, evidence: str) -> Check:
    return {"name": name, "passed": None, "evidence": evidence, "problem": None, "fix": None}


def outcome(name: str, passed: bool, evidence: str, problem: str, fix: str) -> Check:
    return ok(name, evidence) if passed else failed(name, evidence, problem, fix)
