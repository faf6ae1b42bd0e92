"""mevos.export"""
