"""covidxray.training"""
