"""mevos.train"""
