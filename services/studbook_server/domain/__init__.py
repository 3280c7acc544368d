"""Studbook's domain: the event contract and the rules that events follow."""
