"""quickstart"""
