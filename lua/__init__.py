"""Lua scripts that own every change to stock, reservations and orders in Redis."""
